#!/usr/bin/env bash
# The fleet test: rolling deploys with the Ansible collection (ansible/ansible_collections/
# shim/fleet) across three sandbox hosts over a real network, as an operator would run them.
#
# Boots four systemd sandboxes (tests/sandbox/sandbox.sh): three shim hosts (h1..h3: systemd,
# sshd, nginx, shim) and a front load balancer (lb: nginx balancing across the three hosts'
# nginx), each with an eth0 on a bridge in a network namespace this test creates (10.77.0.0/24;
# no other address is used). Ansible and the load generator (wrk) run in that namespace and
# reach the hosts over SSH with a key made here. First ansible-lint on the collection,
# ansible-doc of each module and the modules' unit tests (fast, before anything boots). Then:
#   1. deploy v1 everywhere (the first deploy), then the hosts' nginx sites and the balancer;
#   2. deploy v2 under keep-alive load through the balancer: 0 failed requests, every host
#      on v2, changed=True, one host after the other; shim_status facts; the same again:
#      changed=False everywhere; --check with v1: a plan, nothing changes;
#   3. a revision no host has: the dry run on every host stops the playbook, no rollout;
#      "bad" (fails its health check) under load: the canary h1 bails out, the rollout stops,
#      h2 and h3 never see it, h1 keeps serving v2, the playbook fails with shim's message,
#      the failed step and the journal lines; 0 failed requests;
#   4. rollback.yml (through the balancer play, delegate_to lb): every host back on v1;
#      again with from_revision: nothing changes; a deploy whose playbook is SIGKILLed while
#      the canary upgrades, run again: every host on the revision, no leftover instance.
# Prints PASS and exits 0, or fails naming what did not hold. Always removes the sandboxes and
# the namespace, also on failure.
# Usage: tests/fleet-test.sh      (SHIM_FLEET_ID: a suffix for the sandbox/namespace names)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
T0=$SECONDS
ID="${SHIM_FLEET_ID:-$$}"
PREFIX="fleet-$ID"
NS="fleet-$ID"
SB="bash tests/sandbox/sandbox.sh"
NET=10.77.0
declare -A ADDR=([lb]=$NET.10 [h1]=$NET.11 [h2]=$NET.12 [h3]=$NET.13)
HOSTS=(h1 h2 h3)

fail() { echo "fleet-test.sh: FAIL: $*" >&2; exit 1; }
step() { echo; echo "== $*"; }

cargo build --locked --bins
TARGET="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)"
WORK="$(mktemp -d /var/tmp/shim-fleet.XXXXXX)"

cleanup() {
  set +e
  if [[ -n "${WRK_PID:-}" ]]; then kill "$WRK_PID" 2>/dev/null; fi
  if ip netns list 2>/dev/null | grep -qx "$NS\( .*\)\?"; then
    # Only what this test started runs in its namespace: wrk, ssh ControlPersist masters.
    for p in $(ip netns pids "$NS" 2>/dev/null); do kill "$p" 2>/dev/null; done
    ip netns del "$NS"
  fi
  for n in "${HOSTS[@]}" lb; do $SB down --name "$PREFIX-$n" >/dev/null 2>&1; done
  rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

in_ns() { ip netns exec "$NS" "$@"; }
in_sb() { local n="$1"; shift; $SB exec --name "$PREFIX-$n" --env "WORK=$WORK" --env "TARGET=$TARGET" -- bash -euo pipefail -c "$*"; }

step "0. ansible-lint on the collection; ansible-doc of each module; the modules' unit tests"
(cd ansible/ansible_collections/shim/fleet && ANSIBLE_HOME="$WORK/ansible-home" ANSIBLE_COLLECTIONS_PATH="$REPO/ansible" ansible-lint --offline) ||
  fail "ansible-lint is not clean"
# The modules' DOCUMENTATION, EXAMPLES and RETURN parse (ansible-doc refuses them otherwise).
for m in shim_upgrade shim_rollback shim_status; do
  ANSIBLE_HOME="$WORK/ansible-home" ANSIBLE_COLLECTIONS_PATH="$REPO/ansible" ansible-doc "shim.fleet.$m" >/dev/null ||
    fail "ansible-doc shim.fleet.$m"
done
PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$REPO/ansible" python3 -m unittest discover -s ansible/ansible_collections/shim/fleet/tests/unit ||
  fail "the modules' unit tests failed"

step "images v1, v2 and bad (fails its health check), a key, before the sandboxes boot"
for rev in v1 v2; do
  bash tests/sandbox/build-test-image.sh "$WORK/images/hello" "$rev" "$rev" "$TARGET/debug/shim-testapp" >/dev/null
done
IMAGE_ENV=APP_HEALTH_FAIL=1 bash tests/sandbox/build-test-image.sh "$WORK/images/hello" bad bad "$TARGET/debug/shim-testapp" >/dev/null
# slow: healthy 2.5 s after it starts, time enough to kill the playbook in the middle.
IMAGE_ENV=APP_BOOT_DELAY_MS=2500 bash tests/sandbox/build-test-image.sh "$WORK/images/hello" slow slow "$TARGET/debug/shim-testapp" >/dev/null
ssh-keygen -q -t ed25519 -N '' -C fleet-test -f "$WORK/id_ed25519"

step "four sandboxes on a bridge in namespace $NS"
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add br0 type bridge
ip -n "$NS" link set br0 up
ip -n "$NS" addr add "$NET.1/24" dev br0
for n in "${HOSTS[@]}" lb; do
  $SB up --name "$PREFIX-$n"
  pid="$($SB pid --name "$PREFIX-$n")"
  veth="fv$ID$n"
  ip link add "$veth" type veth peer name eth0 netns "$pid"
  ip link set "$veth" netns "$NS"
  ip -n "$NS" link set "$veth" master br0 up
  nsenter -t "$pid" -n ip addr add "${ADDR[$n]}/24" dev eth0
  nsenter -t "$pid" -n ip link set eth0 up
  in_sb "$n" '
    mkdir -p /root/.ssh && install -m 0600 "$WORK/id_ed25519.pub" /root/.ssh/authorized_keys
    systemctl is-active --quiet ssh || { systemctl status ssh --no-pager; exit 1; }
    rm -f /etc/nginx/sites-enabled/default
  '
done

for n in "${HOSTS[@]}"; do
  in_sb "$n" '
    install -m 0755 "$TARGET/debug/shim" /usr/local/bin/shim
    mkdir -p /var/lib/images /etc/shim && cp -a "$WORK/images/hello" /var/lib/images/hello
    cat > /etc/shim/services.toml <<TOML
[shim]
port_range = [20000, 29999]
switch = "nftables"

[services.hello]
image = "oci:/var/lib/images/hello:{revision}"
runtime = "runc"

[services.hello.processes.web]
count = 2
health = { path = "/health", interval = "1s", timeout = "1s", start_period = "4s" }
proxy = { upstream = "hello_web", file = "/etc/nginx/shim/hello.conf" }
drain = "1s"
stop_timeout = "5s"
TOML
    systemctl restart nginx
  '
done

step "the front load balancer (nginx on lb, keep-alive to the hosts, next upstream on errors)"
in_sb lb "
cat > /etc/nginx/shim-fleet-upstream.conf <<CONF
    server ${ADDR[h1]}:80;
    server ${ADDR[h2]}:80;
    server ${ADDR[h3]}:80;
CONF
cat > /etc/nginx/sites-enabled/front <<'CONF'
upstream fleet {
    include /etc/nginx/shim-fleet-upstream.conf;
    keepalive 16;
}
server {
    listen 80 default_server;
    location / {
        proxy_pass http://fleet;
        proxy_http_version 1.1;
        proxy_set_header Connection \"\";
        proxy_connect_timeout 2s;
        proxy_next_upstream error timeout http_502 http_503 http_504;
    }
}
CONF
nginx -t 2>/dev/null
systemctl restart nginx
"

step "Ansible's inventory and configuration (the controller runs in $NS)"
for i in $(seq 100); do
  in_ns ssh-keyscan -t ed25519 "${ADDR[@]}" >"$WORK/known_hosts" 2>/dev/null || true
  [[ "$(wc -l <"$WORK/known_hosts")" == 4 ]] && break
  sleep 0.1
done
[[ "$(wc -l <"$WORK/known_hosts")" == 4 ]] || fail "sshd does not answer on all four sandboxes"
cat >"$WORK/inventory.ini" <<INI
[shim_hosts]
fleet-h1 ansible_host=${ADDR[h1]}
fleet-h2 ansible_host=${ADDR[h2]}
fleet-h3 ansible_host=${ADDR[h3]}

[shim_lb]
fleet-lb ansible_host=${ADDR[lb]}

[all:vars]
ansible_user=root
ansible_ssh_private_key_file=$WORK/id_ed25519
ansible_ssh_common_args=-o UserKnownHostsFile=$WORK/known_hosts -o StrictHostKeyChecking=yes
INI
cat >"$WORK/ansible.cfg" <<CFG
[defaults]
collections_path = $REPO/ansible
interpreter_python = /usr/bin/python3
forks = 10
retry_files_enabled = False
local_tmp = $WORK/ansible-tmp
[ssh_connection]
control_path_dir = $WORK/cp
pipelining = True
CFG
playbook() {
  local log="$1"; shift
  echo "\$ ansible-playbook -i inventory.ini $*" >&2
  set +e
  in_ns env ANSIBLE_CONFIG="$WORK/ansible.cfg" ANSIBLE_HOME="$WORK/ansible-home" ANSIBLE_FORCE_COLOR=0 \
    ansible-playbook -i "$WORK/inventory.ini" "$@" >"$log" 2>&1
  local rc=$?
  set -e
  sed 's/^/    /' "$log" >&2
  return $rc
}
# The revision every instance of hello on host $1 runs ("" if none or several).
revision_on() {
  in_sb "$1" 'shim status --id hello --json | jq -r "[.[].revision] | unique | if length == 1 then .[0] else \"\" end"'
}
# wrk through the balancer in the background; load_end prints and checks its counts.
load_start() {
  # ip netns exec execs wrk: $! is wrk itself (SIGINT makes it stop and print its counts).
  ip netns exec "$NS" wrk -t2 -c16 -d300s --latency "http://${ADDR[lb]}/" >"$WORK/wrk.out" 2>&1 &
  WRK_PID=$!
  sleep 1
}
load_end() { # $1 = what; $2 = "strict" to require 0 failed requests
  kill -INT "$WRK_PID"
  wait "$WRK_PID" || true
  WRK_PID=
  local req sock non2xx
  req=$(grep -o "^ *[0-9]* requests in" "$WORK/wrk.out" | grep -o "[0-9]*" | head -1)
  sock=$(grep -o "Socket errors: .*" "$WORK/wrk.out" || echo "Socket errors: none")
  non2xx=$(grep -o "Non-2xx or 3xx responses: [0-9]*" "$WORK/wrk.out" | grep -o "[0-9]*$" || echo 0)
  echo "load during $1: ${req:-0} requests through the balancer; $sock; non-2xx: $non2xx"
  [[ "${req:-0}" -gt 100 ]] || { cat "$WORK/wrk.out"; fail "too few requests during $1"; }
  if [[ "${2:-}" == strict ]]; then
    [[ "$sock" == "Socket errors: none" && "$non2xx" == 0 ]] || { cat "$WORK/wrk.out"; fail "failed requests during $1"; }
  fi
}
count() { grep -c -- "$1" "$2" || true; }

step "1. the first deploy: v1 on every host"
playbook "$WORK/v1.log" shim.fleet.deploy -e service=hello -e revision=v1 || fail "deploy of v1 failed"
[[ "$(count 'changed=True none -> v1' "$WORK/v1.log")" == 3 ]] || fail "v1: expected 3 hosts changed None -> v1"
for n in "${HOSTS[@]}"; do
  in_sb "$n" '
    cat > /etc/nginx/sites-enabled/hello <<CONF
include /etc/nginx/shim/hello.conf;
server {
    listen 80 default_server;
    location / { proxy_pass http://hello_web; proxy_next_upstream error timeout http_502 http_503; }
}
CONF
    nginx -t 2>/dev/null && systemctl reload nginx
  '
done
for i in $(seq 100); do
  in_ns curl -fsS "http://${ADDR[lb]}/" 2>/dev/null | grep -q revision=v1 && break
  sleep 0.1
done
in_ns curl -fsS "http://${ADDR[lb]}/" | grep revision=v1 || fail "the balancer does not serve v1"

step "2. rolling deploy of v2 under keep-alive load through the balancer"
load_start
playbook "$WORK/v2.log" shim.fleet.deploy -e service=hello -e revision=v2 || fail "deploy of v2 failed"
load_end "the deploy of v2" strict
[[ "$(count 'changed=True v1 -> v2' "$WORK/v2.log")" == 3 ]] || fail "v2: expected 3 hosts changed v1 -> v2"
for n in "${HOSTS[@]}"; do [[ "$(revision_on "$n")" == v2 ]] || fail "$n does not run v2"; done
# The canary ran alone, before the others: batches of one host each ([1, "25%"] of 3 hosts).
[[ "$(grep -o 'shim_fleet fleet-h[0-9]' "$WORK/v2.log" | tr '\n' ' ')" == "shim_fleet fleet-h1 shim_fleet fleet-h2 shim_fleet fleet-h3 " ]] ||
  fail "hosts not deployed in inventory order, one by one"
# shim_status as an operator would run it, ad hoc: per host 2 instances and the summary on v2.
in_ns env ANSIBLE_CONFIG="$WORK/ansible.cfg" ANSIBLE_HOME="$WORK/ansible-home" \
  ansible -i "$WORK/inventory.ini" shim_hosts -m shim.fleet.shim_status -a service=hello >"$WORK/status.log" 2>&1 ||
  { cat "$WORK/status.log"; fail "shim_status failed"; }
[[ "$(count '"revision": "v2"' "$WORK/status.log")" == 9 ]] || { cat "$WORK/status.log"; fail "shim_status facts do not show v2 everywhere"; }
playbook "$WORK/v2-again.log" shim.fleet.deploy -e service=hello -e revision=v2 || fail "second deploy of v2 failed"
[[ "$(count 'changed=False v2 -> v2' "$WORK/v2-again.log")" == 3 ]] || fail "second v2: expected changed=False on 3 hosts"
grep -E "fleet-h[0-9] *: .*changed=0" "$WORK/v2-again.log" | grep -c . | grep -qx 3 || fail "second v2: PLAY RECAP shows changes"

step "2b. --check: the plan of a deploy of v1, nothing changes"
playbook "$WORK/check.log" shim.fleet.deploy -e service=hello -e revision=v1 --check || fail "deploy --check failed"
[[ "$(count 'hello: v2 -> v1: would change' "$WORK/check.log")" == 3 ]] || fail "--check: expected 3 hosts that would change"
[[ "$(count 'changed=True v2 -> v1' "$WORK/check.log")" == 3 ]] || fail "--check: expected the dry run's answer on 3 hosts"
for n in "${HOSTS[@]}"; do [[ "$(revision_on "$n")" == v2 ]] || fail "$n changed in check mode"; done

step "3a. a revision no host has: the dry run on every host stops it before any host changes"
if playbook "$WORK/nope.log" shim.fleet.deploy -e service=hello -e revision=nope; then
  fail "the deploy of a revision that does not exist succeeded"
fi
grep -q 'tag \\"nope\\" not found' "$WORK/nope.log" || fail "no shim message for the unknown revision"
[[ "$(count '"bad_input": true' "$WORK/nope.log")" == 3 ]] || fail "not a bad-input failure on all three hosts"
! grep -q "TASK \[Deploy the revision" "$WORK/nope.log" || fail "the rollout started although the dry run failed"

step "3b. a revision that fails its health check: the canary bails out, the rollout stops"
for n in h2 h3; do
  in_sb "$n" 'shim status --id hello --json | jq -c "[.[] | {unit, main_pid, deployment}]"' >"$WORK/$n.before"
done
load_start
if playbook "$WORK/bad.log" shim.fleet.deploy -e service=hello -e revision=bad; then
  fail "the deploy of bad succeeded"
fi
load_end "the failed deploy of bad" strict
grep -q "fleet-h1.*FAILED.*bailed out; v2 is still serving" "$WORK/bad.log" || fail "no shim message in the playbook's failure"
grep -q '"failed_step": "health"' "$WORK/bad.log" || fail "the failure does not name the health step"
grep -q '"journal": {"shim-hello-web-bad' "$WORK/bad.log" || fail "the failure has no journal lines of the failed instances"
[[ "$(count 'shim_fleet fleet-' "$WORK/bad.log")" == 0 ]] || fail "a host reported a deploy of bad"
for n in h2 h3; do
  in_sb "$n" 'shim status --id hello --json | jq -c "[.[] | {unit, main_pid, deployment}]"' >"$WORK/$n.after"
  cmp -s "$WORK/$n.before" "$WORK/$n.after" || fail "$n changed: $(cat "$WORK/$n.before") -> $(cat "$WORK/$n.after")"
  [[ "$(in_sb "$n" 'journalctl --no-pager | grep -c "shim-hello-web-bad" || true')" == 0 ]] || fail "$n started instances of bad"
  [[ "$(revision_on "$n")" == v2 ]] || fail "$n does not run v2"
done
[[ "$(revision_on h1)" == v2 ]] || fail "h1 does not run v2 after the bail-out"
in_ns curl -fsS "http://${ADDR[h1]}/" | grep revision=v2 || fail "h1 does not serve v2"
echo "h1 serves v2 still; h2, h3: same instances, same pids, no instance of bad ever started"

step "4. rollback.yml, each host out of the balancer while it rolls back (delegate_to lb)"
load_start
playbook "$WORK/rollback.log" shim.fleet.rollback -e service=hello -e from_revision=v2 -e shim_fleet_lb=true ||
  fail "rollback failed"
load_end "the rollback (the balancer reloads its nginx twice per host)"
for n in "${HOSTS[@]}"; do [[ "$(revision_on "$n")" == v1 ]] || fail "$n is not back on v1"; done
[[ "$(count 'changed=True v2 -> v1' "$WORK/rollback.log")" == 3 ]] || fail "rollback: expected 3 hosts changed v2 -> v1"
# Per host: its server line marked down then up again, the balancer reloaded each time.
[[ "$(grep -c 'changed: \[fleet-h[0-9] -> fleet-lb(' "$WORK/rollback.log")" == 12 ]] ||
  fail "rollback: the balancer's server lines were not taken out and back (delegate_to)"
in_sb lb '! grep -q down /etc/nginx/shim-fleet-upstream.conf && test "$(grep -c "^    server" /etc/nginx/shim-fleet-upstream.conf)" = 3' ||
  fail "the balancer's upstream file is not back to three live servers"
in_ns curl -fsS "http://${ADDR[lb]}/" | grep revision=v1 || fail "the balancer does not serve v1"
playbook "$WORK/rollback-again.log" shim.fleet.rollback -e service=hello -e from_revision=v2 || fail "second rollback failed"
[[ "$(count 'changed=False v1 -> v1' "$WORK/rollback-again.log")" == 3 ]] || fail "second rollback changed something"

step "4a. the balancer play for a host the balancer does not know: refused before the host changes"
in_sb lb 'cat /etc/nginx/shim-fleet-upstream.conf' >"$WORK/lb.before"
if playbook "$WORK/lb-unknown.log" shim.fleet.deploy -e service=hello -e revision=v2 -e shim_fleet_lb=true \
  -e shim_fleet_lb_server=10.77.0.99:80; then
  fail "the deploy with an unknown balancer line succeeded"
fi
grep -q "The server line is in each load balancer's upstream file, once" "$WORK/lb-unknown.log" || fail "no check of the balancer line"
! grep -q "TASK \[Deploy the revision" "$WORK/lb-unknown.log" || fail "the deploy ran although the balancer line is unknown"
in_sb lb 'cat /etc/nginx/shim-fleet-upstream.conf' | cmp -s - "$WORK/lb.before" || fail "the balancer's file changed"
for n in "${HOSTS[@]}"; do [[ "$(revision_on "$n")" == v1 ]] || fail "$n changed"; done

step "4b. the playbook killed in the middle of the canary's upgrade (a cancelled CI job), then run again"
# Its own process group (setsid), killed whole: the controller and its forks.
setsid ip netns exec "$NS" env ANSIBLE_CONFIG="$WORK/ansible.cfg" ANSIBLE_HOME="$WORK/ansible-home" \
  ansible-playbook -i "$WORK/inventory.ini" shim.fleet.deploy -e service=hello -e revision=slow \
  >"$WORK/killed.log" 2>&1 &
KILLED_PID=$!
started=
for i in $(seq 300); do
  if in_sb h1 'systemctl list-units --no-legend "shim-hello-web-slow-*" | grep -q .'; then started=1; break; fi
  sleep 0.1
done
[[ -n "$started" ]] || { cat "$WORK/killed.log"; fail "the canary never started instances of slow"; }
pgid="$(ps -o pgid= -p "$KILLED_PID" | tr -d ' ')"
[[ -n "$pgid" && "$pgid" != "$(ps -o pgid= -p $$ | tr -d ' ')" ]] || fail "the playbook has no process group of its own"
kill -KILL -- "-$pgid"
wait "$KILLED_PID" 2>/dev/null || true
echo "killed the playbook while h1 was upgrading to slow; then h1 ran: $(revision_on h1 || true) (empty: v1 and slow side by side), h2: $(revision_on h2), h3: $(revision_on h3)"
[[ "$(revision_on h2)" == v1 && "$(revision_on h3)" == v1 ]] || fail "hosts after the canary changed before the kill"
playbook "$WORK/rerun.log" shim.fleet.deploy -e service=hello -e revision=slow || fail "the deploy after the kill failed"
for n in "${HOSTS[@]}"; do [[ "$(revision_on "$n")" == slow ]] || fail "$n is not on slow after the re-run"; done
[[ "$(count 'changed=True v1 -> slow' "$WORK/rerun.log")" -ge 2 ]] || fail "the re-run did not deploy h2 and h3"
for n in "${HOSTS[@]}"; do
  in_sb "$n" '[ "$(shim status --id hello --json | jq length)" = 2 ]' || fail "$n has leftover instances after the re-run"
done
in_ns curl -fsS "http://${ADDR[lb]}/" | grep revision=slow || fail "the balancer does not serve slow"

echo "PASS ($((SECONDS - T0)) s)"
