#!/usr/bin/env bash
# `shim status` at scale, in a fresh systemd sandbox: 100 services × 4 instances = 400 units,
# against `systemctl list-units 'shim-*'` and `podman ps` at the same count.
#
# The 400 shim units are transient units made with systemd-run in the shape shim gives a
# runc/crun instance, with `sleep infinity` in place of the container:
#   - named and tagged as shim does (shim-<svc>-web-<rev12>-<i>.service in shim.slice,
#     LogExtraFields SHIM_SERVICE/PROCESS/REVISION/INSTANCE/PORT);
#   - an instance directory /run/shim/instances/<svc>/<stem>/ holding meta.json as shim writes
#     it when it plans an instance (src/plan/mod.rs InstanceMeta);
#   - ExecStartPre adds one to <dir>/starts, as `shim instance prepare` does (a shell line
#     here: no overlay is mounted);
#   - Type=forking with PIDFile=<dir>/container.pid: ExecStart starts `sleep infinity` in
#     the background, writes its pid to the file and exits, as `runc run --detach --pid-file`
#     does, so systemd takes MainPID from the file as it does for shim's units.
# No config.json, overlay or runtime state: `shim status` reads none of them. 400 real
# containers would not fit this 2-core machine beside the podman ones. The podman side runs
# real containers (`podman run -d`, the test image, `sleep`), PODMAN_COUNT of them (default
# 400).
#
# Also reported: the messages one `shim status` sends (strace, sendmsg calls) and the CPU
# time dbus-daemon and systemd spend over RUNS runs of `shim status` alone.
#
# Usage: bench/status.sh [RUNS] (default 20; median of RUNS, interleaved)
# Env: PODMAN_COUNT (default 400; 0 skips podman), SERVICES (100), INSTANCES (4), SHIM_BIN
# (the shim binary to measure, default the release build; e.g. an older build to compare).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-20}"
cargo build --release --bins --quiet
T="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/release"
SB="bash tests/sandbox/sandbox.sh"
NAME="${SHIM_SANDBOX_NAME:-bench-status}"
trap '$SB down --name $NAME >/dev/null 2>&1 || true' EXIT
$SB down --name $NAME >/dev/null 2>&1 || true
$SB up --name $NAME >/dev/null
$SB exec --name $NAME --env RUNS="$RUNS" --env T="$T" --env SHIM_BIN="${SHIM_BIN:-$T/shim}" --env PODMAN_COUNT="${PODMAN_COUNT:-400}" \
  --env SERVICES="${SERVICES:-100}" --env INSTANCES="${INSTANCES:-4}" -- bash -euo pipefail -c '
SHIM=$SHIM_BIN
now() { date +%s%N; }
ms() { echo "scale=1; $1/1000000" | bc -l; }
median() { sort -n | awk "{ a[NR] = \$1 } END { print a[int((NR + 1) / 2)] }"; }
REV=279d9035886d4c0427549863c4c2101e4a63e041

t0=$(now)
port=20000
for s in $(seq -w 1 "$SERVICES"); do
  for i in $(seq 1 "$INSTANCES"); do
    stem="shim-bench_$s-web-${REV:0:12}-$i"
    dir="/run/shim/instances/bench_$s/$stem"
    mkdir -p -m 0700 "$dir"
    printf "{\"unit\":\"%s.service\",\"service\":\"bench_%s\",\"process\":\"web\",\"revision\":\"%s\",\"instance\":%s,\"port\":%s}" \
      "$stem" "$s" "$REV" "$i" "$port" > "$dir/meta.json"
    systemd-run --quiet --collect --slice shim.slice --unit "$stem.service" \
      -p Type=forking -p "PIDFile=$dir/container.pid" -p GuessMainPID=no \
      -p "ExecStartPre=/bin/sh -c \"echo \$\$((\$\$(cat $dir/starts 2>/dev/null || echo 0) + 1)) > $dir/starts\"" \
      -p "LogExtraFields=SHIM_SERVICE=bench_$s" -p LogExtraFields=SHIM_PROCESS=web \
      -p "LogExtraFields=SHIM_REVISION=$REV" -p "LogExtraFields=SHIM_INSTANCE=$i" \
      -p "LogExtraFields=SHIM_PORT=$port" \
      /bin/sh -c "sleep infinity >/dev/null 2>&1 & echo \$! > $dir/container.pid"
    port=$((port + 1))
  done
done
units=$(systemctl list-units --plain --no-legend "shim-*" | grep -c running)
echo "created $units running shim-* units in $(ms $(( $(now) - t0 ))) ms"

n=0
if [ "$PODMAN_COUNT" -gt 0 ]; then
  bash tests/sandbox/build-test-image.sh /var/lib/bench/img rev1 rev1 $T/shim-testapp >/dev/null
  # As bench/spine.sh: no pids controller and no CAP_SYS_RESOURCE in the sandbox; storage
  # on the sandbox tmpfs, since overlayfs cannot stack on the sandbox root (an overlayfs).
  mkdir -p /etc/containers
  printf "[containers]\npids_limit = 0\n[engine]\nruntime = \"runc\"\n" > /etc/containers/containers.conf
  podman() { command podman --root /tmp/podman-root --storage-driver overlay "$@"; }
  podman pull -q oci:/var/lib/bench/img:rev1 >/dev/null
  img=$(podman images -q | head -n1)
  t0=$(now)
  for c in $(seq 1 "$PODMAN_COUNT"); do
    podman run -d --network host --entrypoint /bin/sleep "$img" 100000000 >/dev/null
  done
  n=$(podman ps -q | wc -l)
  echo "created $n running podman containers in $(ms $(( $(now) - t0 ))) ms"
fi

: > /tmp/shim.ns; : > /tmp/shimjson.ns; : > /tmp/sysd.ns; : > /tmp/podman.ns
rows=$($SHIM status --json | jq length)
[ "$rows" = "$units" ] || { echo "shim status shows $rows rows, expected $units"; exit 1; }
# Each row as systemd says it: the pid file is the MainPID, one start so far.
bad=$($SHIM status --json | jq -r ".[] | \"\(.unit) \(.main_pid) \(.restarts)\"" | while read -r u pid rs; do
  [ "$pid" = "$(systemctl show -p MainPID --value "$u")" ] && [ "$rs" = 0 ] || echo "$u"
done | wc -l)
[ "$bad" = 0 ] || { echo "$bad rows disagree with systemd on MainPID or restarts"; exit 1; }
if command -v strace >/dev/null; then
  msgs=$(strace -f -c -e trace=sendmsg $SHIM status 2>&1 >/dev/null | awk "/sendmsg/ { print \$4 }")
  echo "one shim status run: $msgs sendmsg calls (D-Bus messages sent)"
fi
cpu() { awk "{ print \$14 + \$15 }" /proc/$1/stat; }
tck=$(getconf CLK_TCK)
dbus=$(pidof dbus-daemon | awk "{ print \$1 }")
d0=$(cpu $dbus); p0=$(cpu 1)
for r in $(seq "$RUNS"); do $SHIM status >/dev/null; done
d1=$(cpu $dbus); p1=$(cpu 1)
echo "CPU per shim status run (mean of $RUNS runs of it alone): dbus-daemon $(( (d1 - d0) * 1000 / tck / RUNS )) ms, systemd (PID 1) $(( (p1 - p0) * 1000 / tck / RUNS )) ms"
for r in $(seq "$RUNS"); do
  a=$(now); $SHIM status >/dev/null; b=$(now); echo $((b - a)) >> /tmp/shim.ns
  a=$(now); $SHIM status --json >/dev/null; b=$(now); echo $((b - a)) >> /tmp/shimjson.ns
  a=$(now); systemctl list-units --no-pager "shim-*" >/dev/null; b=$(now); echo $((b - a)) >> /tmp/sysd.ns
  if [ "$n" -gt 0 ]; then
    a=$(now); podman ps >/dev/null; b=$(now); echo $((b - a)) >> /tmp/podman.ns
  fi
done
echo "median of $RUNS runs, $units shim units ($SERVICES services x $INSTANCES instances), $n podman containers:"
printf "  %-40s %8s ms\n" "shim status" "$(ms $(median < /tmp/shim.ns))"
printf "  %-40s %8s ms\n" "shim status --json" "$(ms $(median < /tmp/shimjson.ns))"
printf "  %-40s %8s ms\n" "systemctl list-units shim-*" "$(ms $(median < /tmp/sysd.ns))"
[ "$n" -gt 0 ] && printf "  %-40s %8s ms\n" "podman ps ($n containers)" "$(ms $(median < /tmp/podman.ns))"
echo "all runs (ms): shim status: $(for x in $(cat /tmp/shim.ns); do ms $x; done | tr "\n" " ")"
'
