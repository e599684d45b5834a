#!/usr/bin/env bash
# Probe benchmark, in a fresh systemd sandbox (real systemd 252, runc, podman), same run:
#  1. CPU time of one probe run of a 4-instance service, against `podman healthcheck run` of
#     one container whose health command does the equivalent HTTP check (busybox wget of
#     /health). shim twice: as it runs in the steady state (the fast path: a few small reads
#     and the 4 HTTP checks, no D-Bus; at most one full run per minute) and with every run a
#     full one (SHIM_PROBE_FAST=0: one D-Bus listing, the 4 checks, counts):
#     a. systemd's own accounting of the probe unit as its timer runs it (CPUUsageNSec);
#     b. rusage of the checking command (user+sys of it and its waited-for children);
#     c. everything the check costs the host: the sandbox's whole cgroup (systemd, journald,
#        conmon, runc exec, the container side), idle rate subtracted.
#  1d. a command health check (issue 15): one probe run of a 1-instance service whose check is
#     the same command podman runs (`/bin/sh -c "wget … /health"`, run in the container by
#     `runc exec`), against `podman healthcheck run` of that command, rusage and whole host.
#  2. detection-to-healthy time of a hung instance (interval 1 s, timeout 1 s,
#     unhealthy_after 3): from /admin/hang until the replaced instance answers /health.
# Usage: bench/probe.sh [N]   (default 200 checks per measurement)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-200}"
bash tests/install-deps.sh
command -v podman >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends podman conmon >/dev/null; }
cargo build --release --bins --quiet
T="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release"
SB="bash tests/sandbox/sandbox.sh"
trap '$SB down --name benchprobe >/dev/null 2>&1 || true' EXIT
$SB down --name benchprobe >/dev/null 2>&1 || true
$SB up --name benchprobe >/dev/null
$SB exec --name benchprobe -- env N="$N" T="$T" bash -euo pipefail -c '
SHIM=$T/shim
bash tests/sandbox/build-test-image.sh /var/lib/bench/img rev1 rev1 $T/shim-testapp >/dev/null
mkdir -p /tmp/pcfg
cat > /tmp/pcfg/services.toml <<TOML
[shim]
port_range = [22100, 22199]
[services.pb]
image = "oci:/var/lib/bench/img:{revision}"
[services.pb.processes.web]
count = 4
health = { path = "/health", interval = "1s", timeout = "1s", unhealthy_after = 3, start_period = "1s" }
[services.pc]
image = "oci:/var/lib/bench/img:{revision}"
[services.pc.processes.web]
port = true
health = { command = ["/bin/sh", "-c", "wget -q -O /dev/null http://127.0.0.1:\$PORT/health"], interval = "1s", timeout = "1s", start_period = "1s" }
TOML
$SHIM --config /tmp/pcfg start --id pb --revision rev1 >/dev/null
$SHIM --config /tmp/pcfg start --id pc --revision rev1 >/dev/null
systemctl stop shim-probe-pc.timer
sleep 2

# 1a. systemd accounting of timer-driven runs: CPUUsageNSec of each finished run.
: > /tmp/sd.ns
last=""
while [ "$(wc -l < /tmp/sd.ns)" -lt 20 ]; do
  ts=$(systemctl show -p ExecMainStartTimestampMonotonic --value shim-probe-pb.service)
  st=$(systemctl show -p ActiveState --value shim-probe-pb.service)
  if [ "$st" = inactive ] && [ "$ts" != "$last" ] && [ "$ts" != 0 ]; then
    systemctl show -p CPUUsageNSec --value shim-probe-pb.service >> /tmp/sd.ns
    last=$ts
  fi
  sleep 0.05
done
median() { sort -n > /tmp/m; sed -n "$(( ($(wc -l < /tmp/m) + 1) / 2 ))p" /tmp/m; }
sd_med=$(median < /tmp/sd.ns)

# No timer during the measurements by hand (runs must not overlap).
systemctl stop shim-probe-pb.timer
systemctl stop shim-probe-pb.service 2>/dev/null || true

# podman: the same image, one container on the host network, health command = HTTP check.
mkdir -p /etc/containers
printf "[containers]\npids_limit = 0\n[engine]\nruntime = \"runc\"\n" > /etc/containers/containers.conf
P="podman --root /tmp/podman-root --storage-driver overlay"
$P pull -q oci:/var/lib/bench/img:rev1 >/dev/null
IMG=$($P images -q | head -1)
$P run -d --network host -e PORT=22199 --name hc \
  --health-cmd "wget -q -O /dev/null http://127.0.0.1:22199/health" --health-interval disable \
  $IMG >/dev/null
for i in $(seq 50); do curl -sf localhost:22199/health >/dev/null && break; sleep 0.1; done
$P healthcheck run hc || { echo "podman healthcheck fails"; exit 1; }
$SHIM --config /tmp/pcfg probe --id pb || { echo "shim probe fails"; exit 1; }
[ -f /run/shim/supervise/pb.fast.json ] || { echo "no fast-path record after a full run"; exit 1; }

# 1b. rusage: user+sys of N runs (the command and the children it waits for), per run, in µs.
rusage_us() {
  bash -c "for i in \$(seq $N); do \"\$@\" >/dev/null 2>&1; done; times" _ "$@" | tail -1 |
    awk -v n=$N "{ split(\$1,u,/[ms]/); split(\$2,s,/[ms]/); printf \"%d\", (u[1]*60+u[2]+s[1]*60+s[2])*1e6/n }"
}
# 1c. the whole sandbox cgroup, per run, idle rate subtracted, in µs.
usage() { awk "/^usage_usec/ { print \$2 }" /sys/fs/cgroup/cpu.stat; }
now_us() { echo $(( $(date +%s%N) / 1000 )); }
total_us() {
  local u0 t0 u1 t1 i0 it0 i1 it1
  i0=$(usage); it0=$(now_us); sleep 2; i1=$(usage); it1=$(now_us)
  u0=$(usage); t0=$(now_us)
  for i in $(seq $N); do "$@" >/dev/null 2>&1; done
  u1=$(usage); t1=$(now_us)
  awk -v du=$((u1-u0)) -v dt=$((t1-t0)) -v idu=$((i1-i0)) -v idt=$((it1-it0)) -v n=$N \
    "BEGIN { printf \"%d\", (du - idu*dt/idt)/n }"
}
load0=$(cut -d" " -f1-3 /proc/loadavg)
shim_ru=$(rusage_us $SHIM --config /tmp/pcfg probe --id pb)
export SHIM_PROBE_FAST=0
full_ru=$(rusage_us $SHIM --config /tmp/pcfg probe --id pb)
unset SHIM_PROBE_FAST
pod_ru=$(rusage_us $P healthcheck run hc)
shim_tot=$(total_us $SHIM --config /tmp/pcfg probe --id pb)
export SHIM_PROBE_FAST=0
full_tot=$(total_us $SHIM --config /tmp/pcfg probe --id pb)
unset SHIM_PROBE_FAST
pod_tot=$(total_us $P healthcheck run hc)
$SHIM --config /tmp/pcfg probe --id pc || { echo "shim probe (command check) fails"; exit 1; }
cmd_ru=$(rusage_us $SHIM --config /tmp/pcfg probe --id pc)
cmd_tot=$(total_us $SHIM --config /tmp/pcfg probe --id pc)
pod_ru2=$(rusage_us $P healthcheck run hc)
pod_tot2=$(total_us $P healthcheck run hc)
# perf stat (if installed): task-clock of the process from its exec, without the fork and
# the shell around it that rusage counts.
perf_ms() {
  command -v perf >/dev/null || { echo 0; return; }
  perf stat -r $N -x, -e task-clock "$@" 2>&1 >/dev/null | awk -F, "/task-clock/ { print \$1 }"
}
shim_perf=$(perf_ms $SHIM --config /tmp/pcfg probe --id pb)
export SHIM_PROBE_FAST=0
full_perf=$(perf_ms $SHIM --config /tmp/pcfg probe --id pb)
unset SHIM_PROBE_FAST
load1=$(cut -d" " -f1-3 /proc/loadavg)
$P rm -f -t 0 hc >/dev/null

ms() { echo "$1/1000" | bc -l; }
printf "load average before/after: %s / %s (nproc %s)\n" "$load0" "$load1" "$(nproc)"
printf "CPU per check, mean of %d runs (shim: one probe of a 4-instance service; podman: healthcheck run of 1 container)\n" $N
printf "  systemd accounting of the timer-run probe unit (CPUUsageNSec, median of 20 runs): %.2f ms\n" $(echo "$sd_med/1000000" | bc -l)
printf "  rusage of the command:        shim probe %.2f ms (full runs %.2f ms), podman healthcheck run %.2f ms, ratio podman/shim %.1f (full %.1f)\n" \
  $(ms $shim_ru) $(ms $full_ru) $(ms $pod_ru) $(echo "$pod_ru/$shim_ru" | bc -l) $(echo "$pod_ru/$full_ru" | bc -l)
printf "  perf stat task-clock:         shim probe %.2f ms (full runs %.2f ms)\n" $shim_perf $full_perf
printf "  whole host (sandbox cgroup):  shim probe %.2f ms (full runs %.2f ms), podman healthcheck run %.2f ms, ratio podman/shim %.1f\n" \
  $(ms $shim_tot) $(ms $full_tot) $(ms $pod_tot) $(echo "$pod_tot/$shim_tot" | bc -l)

printf "command check (sh -c wget /health in the container), mean of %d runs: rusage shim probe %.2f ms, podman healthcheck run %.2f ms, ratio podman/shim %.1f; whole host shim %.2f ms, podman %.2f ms, ratio %.1f\n" \
  $N $(ms $cmd_ru) $(ms $pod_ru2) $(echo "$pod_ru2/$cmd_ru" | bc -l) $(ms $cmd_tot) $(ms $pod_tot2) $(echo "$pod_tot2/$cmd_tot" | bc -l)
$SHIM --config /tmp/pcfg stop --id pc >/dev/null

# 2. Detection-to-healthy of a hung instance, through the probe timer (recreated by reconcile).
$SHIM --config /tmp/pcfg reconcile >/dev/null
sleep 2
: > /tmp/kill.ms; : > /tmp/heal.ms
for i in 1 2 3 4; do
  u=$(systemctl list-units --plain --no-legend "shim-pb-web-rev1-*-$i.service" | awk "{print \$1}")
  port=$(systemctl show -p LogExtraFields --value $u | tr " " "\n" | sed -n "s/^SHIM_PORT=//p")
  pid=$(systemctl show -p MainPID --value $u)
  t0=$(date +%s%N)
  curl -s localhost:$port/admin/hang >/dev/null
  while [ "$(systemctl show -p MainPID --value $u)" = "$pid" ]; do sleep 0.02; done
  t1=$(date +%s%N)
  until curl -sf -m 0.5 localhost:$port/health >/dev/null; do sleep 0.02; done
  t2=$(date +%s%N)
  echo $(( (t1-t0)/1000000 )) >> /tmp/kill.ms; echo $(( (t2-t0)/1000000 )) >> /tmp/heal.ms
  sleep 3
done
printf "hung instance (interval 1s, timeout 1s, unhealthy_after 3; RestartSec 2s), 4 runs: killed after %s ms, healthy again after %s ms (median; all: %s)\n" \
  "$(median < /tmp/kill.ms)" "$(median < /tmp/heal.ms)" "$(tr "\n" " " < /tmp/heal.ms)"
$SHIM --config /tmp/pcfg stop --id pb >/dev/null
'
