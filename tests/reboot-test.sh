#!/usr/bin/env bash
# The reboot scenario of supervision, run from the host (a test inside the sandbox cannot
# reboot it): boots a fresh sandbox, installs shim as the package would (/usr/bin/shim,
# shim-reconcile.service enabled), deploys a proxied service and upgrades it to its second
# revision with shim SIGKILLed right after nginx switched (during drain), stops another one,
# corrupts a third one's state file, reboots the sandbox (SIGKILL of its PID 1, /etc and /var kept, /run
# and every transient unit gone), then checks that shim-reconcile brought the service back
# at the revision nginx was switched to when shim died (rev2), nginx serves it, its probe
# timer runs, the stopped service stayed down, its cron timer is back at rev2, and the
# broken service was reported (reconcile's journal, status) and left alone. Prints PASS or FAIL; exits non-zero on failure.
#
# Usage: tests/reboot-test.sh   (as root; uses $CARGO_TARGET_DIR like cargo)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
case "$TARGET" in /*) ;; *) TARGET="$REPO/$TARGET" ;; esac
NAME="reboot-$$"
SB="bash tests/sandbox/sandbox.sh"
PORT=8377

fail() {
  echo "reboot test: FAIL: $*"
  exit 1
}
X() { $SB exec --name "$NAME" -- "$@"; }

cargo build --locked --bins --quiet
[[ -x "$TARGET/debug/shim" && -x "$TARGET/debug/shim-testapp" ]] ||
  fail "no $TARGET/debug/shim or shim-testapp"
trap '$SB down --name "$NAME" >/dev/null 2>&1 || true' EXIT
$SB up --name "$NAME" >/dev/null || fail "the sandbox did not boot"

echo "reboot test: install, deploy, enable shim-reconcile"
X env SHIM_BIN="$TARGET/debug/shim" APP="$TARGET/debug/shim-testapp" PORT="$PORT" \
  bash -euo pipefail -c '
install -m 0755 "$SHIM_BIN" /usr/bin/shim
L=/var/lib/shim-reboot/images/testapp
export IMAGE_CRONTAB="*/5 * * * * echo every-five-minutes
"
bash tests/sandbox/build-test-image.sh $L rev1 rev1 "$APP" >/dev/null
bash tests/sandbox/build-test-image.sh $L rev2 rev2 "$APP" >/dev/null
mkdir -p /etc/shim
echo secret-one > /etc/shim/reb-secret
cat >/etc/shim/services.toml <<TOML
[shim]
port_range = [27000, 27999]

[services.reb]
image = "oci:$L:{revision}"
cron = "bin/generate-cron"

[services.reb.processes.web]
count = 2
health = { path = "/health", interval = "1s", timeout = "1s" }
proxy = { upstream = "reb_web", file = "/etc/nginx/shim/reb.conf" }
drain = "0s"

[services.reb.processes.worker]
command = ["/bin/sh", "-c", "trap \"exit 0\" TERM; while true; do sleep 1; done"]
mounts = [{ type = "volume", source = "data", target = "/data" }]
secrets = [{ source = "/etc/shim/reb-secret", target = "/run/secrets/reb", mode = "0400" }]

[services.down]
image = "oci:$L:{revision}"

[services.down.processes.web]
health = { path = "/health" }

[services.dis]
image = "oci:$L:{revision}"

[services.dis.processes.web]
health = { path = "/health" }

[services.brk]
image = "oci:$L:{revision}"

[services.brk.processes.web]
health = { path = "/health" }
TOML
systemctl start nginx
shim upgrade --id reb --revision rev1 >/dev/null
cat >/etc/nginx/sites-enabled/shim-reb <<SITE
include /etc/nginx/shim/reb.conf;
server {
  listen 127.0.0.1:$PORT;
  location / { proxy_pass http://reb_web; }
}
SITE
nginx -t 2>/dev/null && systemctl reload nginx
rc=0; SHIM_TEST_KILL_AFTER=drain shim upgrade --id reb --revision rev2 >/dev/null || rc=$?
[[ $rc == 137 ]] || { echo "the rev2 upgrade was not killed after the switch (exit $rc)"; exit 1; }
grep -q "revision rev2" /etc/nginx/shim/reb.conf || { echo "nginx was not switched to rev2"; exit 1; }
# The tag rev2 is moved to other content: the deployment pinned the manifest, so what comes
# back after the reboot is still the old one, on the same ports. (The old manifest stays in
# the layout as orig2, to put rev2 back for the chaos loop below.)
bash tests/sandbox/build-test-image.sh $L moved moved "$APP" >/dev/null
umoci tag --image $L:rev2 orig2 && umoci tag --image $L:moved rev2
shim status --id reb --json | jq -c "[.[] | select(.revision == \"rev2\") | {unit, port, image_digest}] | sort_by(.unit)" >/var/lib/reb-before.json
[[ "$(jq length /var/lib/reb-before.json)" == 3 ]] || { echo "rev2 instances before the reboot: $(cat /var/lib/reb-before.json)"; exit 1; }
# The content of a volume and of a deployed secret file must come back as they were; the
# source of the secret file is edited, which changes nothing until the next upgrade.
echo kept-across-reboot > /var/lib/shim/volumes/reb/data/kept
echo secret-two > /etc/shim/reb-secret
shim start --id brk --revision rev1 >/dev/null
shim stop --id brk >/dev/null
echo "{\"current\": 7" > /var/lib/shim/state/brk.json
shim start --id down --revision rev1 >/dev/null
shim stop --id down >/dev/null
# Service units: reb and dis are enabled by their first deploy; dis is disabled (not stopped).
shim start --id dis --revision rev1 >/dev/null
[[ "$(systemctl is-enabled shim-reb.service shim-dis.service | tr "\n" " ")" == "enabled enabled " ]] ||
  { echo "the service units are not enabled"; exit 1; }
systemctl disable shim-dis.service 2>/dev/null
install -m 0644 units/shim-reconcile.service /etc/systemd/system/shim-reconcile.service
systemctl daemon-reload
systemctl enable shim-reconcile.service 2>/dev/null
for i in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/" >/dev/null && break; sleep 0.1; done
echo "  before reboot: nginx answers $(curl -sf http://127.0.0.1:$PORT/)"
shim status --id reb | sed "s/^/  /"
' || fail "setting up before the reboot"

echo "reboot test: reboot"
t0=$(date +%s.%N)
# shim-reconcile fails at this boot (brk's state file), so the system is "degraded".
SHIM_SANDBOX_ALLOW_DEGRADED=1 $SB reboot --name "$NAME" ||
  fail "the sandbox did not come back after the reboot (see above)"
echo "  booted in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s (shim-reconcile ran during the boot)"

echo "reboot test: check"
X env PORT="$PORT" bash -uo pipefail -c '
fail() { echo "$*"; exit 1; }
[[ "$(systemctl show -p ExecMainStartTimestampMonotonic --value shim-reconcile.service)" != 0 ]] ||
  fail "shim-reconcile.service did not run at boot"
journalctl -b -u shim-reconcile.service -o cat --no-pager | sed "s/^/  reconcile: /" | head -30
# The broken service fails the boot-time reconcile, by name, and nothing else does.
failed=$(systemctl list-units --failed --no-legend --plain | awk "{print \$1}" | tr "\n" " ")
[[ "$failed" == "shim-reconcile.service " ]] || fail "failed units after the boot: $failed"
journal=$(journalctl -b -u shim-reconcile.service -o cat --no-pager)
[[ "$(systemctl show -p Result --value shim-reconcile.service)" == exit-code ]] ||
  fail "shim-reconcile.service: expected a failure naming brk, got $(systemctl show -p Result --value shim-reconcile.service)"
grep -q "reconcile failed for: brk$" <<<"$journal" || fail "reconcile does not name brk alone: $journal"
grep -q "/var/lib/shim/state/brk.json" <<<"$journal" || fail "reconcile does not name the broken file: $journal"
[[ "$(cat /var/lib/shim/state/brk.json)" == "{\"current\": 7" ]] || fail "the broken state file was changed"
[[ -z "$(systemctl list-units --all --no-legend "shim-brk-*")" ]] || fail "the broken service was started"
shim status 2>&1 >/dev/null | grep -q "service brk: " || fail "status does not report brk"
rows=$(shim status --id reb --json)
n=$(jq "[.[] | select(.revision == \"rev2\" and .state == \"active\")] | length" <<<"$rows")
[[ "$n" == 3 ]] || fail "expected 3 active rev2 instances of reb, got $n: $rows"
[[ "$(jq "[.[] | select(.revision != \"rev2\")] | length" <<<"$rows")" == 0 ]] || fail "other revisions: $rows"
ok=""
for i in $(seq 100); do
  body=$(curl -sf "http://127.0.0.1:$PORT/") && [[ "$body" == revision=rev2* ]] && { ok=1; break; }
  sleep 0.1
done
[[ -n "$ok" ]] || fail "nginx does not serve rev2 (its pinned image; the tag now says moved): ${body:-no answer}"
after=$(jq -c "[.[] | {unit, port, image_digest}] | sort_by(.unit)" <<<"$rows")
[[ "$after" == "$(cat /var/lib/reb-before.json)" ]] ||
  fail "instances, ports or image digests changed across the reboot: before $(cat /var/lib/reb-before.json), after $after"
echo "  after reboot: nginx answers $body"
w=$(systemctl list-units --plain --no-legend "shim-reb-worker-rev2-*" | awk "{print \$1}" | head -1)
[[ -n "$w" ]] || fail "no rev2 worker of reb after the reboot"
kept=$(runc exec "${w%.service}" cat /data/kept) || fail "the worker cannot read its volume"
[[ "$kept" == kept-across-reboot ]] || fail "the volume lost its content across the reboot: $kept"
sec=$(runc exec "${w%.service}" cat /run/secrets/reb) || fail "the worker cannot read its secret file"
[[ "$sec" == secret-one ]] || fail "the secret file is not the deployed copy after the reboot: $sec"
echo "  volume and secret file after reboot: $kept, $sec (source now says $(cat /etc/shim/reb-secret))"
[[ "$(systemctl is-active shim-probe-reb.timer)" == active ]] || fail "probe timer of reb is not active"
for i in $(seq 100); do
  [[ "$(systemctl show -p ExecMainStartTimestampMonotonic --value shim-probe-reb.service)" =~ ^[1-9] ]] && break
  sleep 0.1
done
[[ "$(systemctl show -p ExecMainStartTimestampMonotonic --value shim-probe-reb.service)" =~ ^[1-9] ]] ||
  fail "the probe of reb never ran"
echo "  probe timer: $(systemctl show -p Description --value shim-probe-reb.timer), last run result $(systemctl show -p Result --value shim-probe-reb.service)"
cron=$(shim cron list --id reb --json)
[[ "$(jq "[.[] | select(.timer == \"active\" and .revision == \"rev2\")] | length" <<<"$cron")" == 1 ]] ||
  fail "the cron timer of reb is not back at rev2: $cron"
echo "  cron: $(jq -r ".[0] | \"\(.schedule) \(.command) at \(.revision), timer \(.timer)\"" <<<"$cron")"
[[ -z "$(systemctl list-units --all --no-legend "shim-down-*")" ]] || fail "the stopped service came back"
[[ -z "$(systemctl list-units --all --no-legend "shim-probe-down.*")" ]] || fail "the stopped service has a probe timer"
# The units: reb enabled comes up (after reconcile), down (stopped, its unit enabled) is
# skipped by its ExecCondition, dis (disabled) stays down and is not marked stopped.
[[ "$(systemctl is-active shim-reb.service)" == active ]] || fail "shim-reb.service is not active after the boot"
[[ "$(systemctl is-active shim-down.service)" != active ]] || fail "shim-down.service came up"
[[ -z "$(systemctl list-units --all --no-legend "shim-dis-*")" ]] || fail "the disabled service came back"
[[ "$(systemctl is-active shim-dis.service)" != active ]] || fail "shim-dis.service came up though disabled"
grep -q "shim-dis.service is disabled and inactive: left down" <<<"$journal" || fail "reconcile did not say dis stays down: $journal"
[[ "$(jq .stopped /var/lib/shim/state/dis.json)" == false ]] || fail "dis was marked stopped"
echo "  units: shim-reb.service $(systemctl is-active shim-reb.service), shim-down.service $(systemctl is-active shim-down.service), shim-dis.service $(systemctl is-active shim-dis.service) (disabled)"
# A second reconcile after the boot changes nothing (and names brk again).
out=$(shim reconcile 2>/dev/null) && fail "shim reconcile did not report brk: $out"
grep -q "nothing to do" <<<"$out" || fail "reconcile after boot was not a no-op: $out"
shim status | sed "s/^/  /"
[[ -z "$(systemctl list-units --all --no-legend "shim-dis-*")" ]] || fail "reconcile brought the disabled service back"
# Enabled again (not started): the next reboot (the first of the loop below) brings it back.
systemctl enable shim-dis.service 2>/dev/null
# rev2 back to what it was, for the loop below (whose upgrades resolve the tag afresh).
umoci tag --image /var/lib/shim-reboot/images/testapp:orig2 rev2
' || fail "after the reboot: see above"

# The chaos test, recovery by reboot: an upgrade SIGKILLed right after each step, then a
# reboot. What serves afterwards is what nginx pointed at when shim died: the old revision
# before the switch, the new one from the switch on.
rev=rev2
for step in start health switch drain stop-old; do
  next=$([[ $rev == rev2 ]] && echo rev1 || echo rev2)
  case $step in start | health) want=$rev ;; *) want=$next ;; esac
  X env STEP="$step" NEXT="$next" bash -uo pipefail -c '
rc=0; SHIM_TEST_KILL_AFTER=$STEP shim upgrade --id reb --revision $NEXT >/dev/null 2>&1 || rc=$?
[[ $rc == 137 ]] || { echo "the upgrade to $NEXT was not killed after $STEP (exit $rc)"; exit 1; }
' || fail "killing the upgrade after $step"
  SHIM_SANDBOX_ALLOW_DEGRADED=1 $SB reboot --name "$NAME" >/dev/null || fail "reboot after a kill at $step"
  X env PORT="$PORT" WANT="$want" STEP="$step" bash -uo pipefail -c '
rows=$(shim status --id reb --json)
[[ "$(jq "[.[] | select(.revision == \"$WANT\" and .state == \"active\")] | length" <<<"$rows")" == 3 ]] ||
  { echo "after a kill at $STEP and a reboot: expected 3 active $WANT instances: $rows"; exit 1; }
[[ "$(jq "[.[] | select(.revision != \"$WANT\")] | length" <<<"$rows")" == 0 ]] ||
  { echo "after a kill at $STEP and a reboot: other revisions left: $rows"; exit 1; }
for i in $(seq 100); do
  body=$(curl -sf "http://127.0.0.1:$PORT/") && [[ "$body" == revision=$WANT* ]] && break
  sleep 0.1
done
[[ "$body" == revision=$WANT* ]] || { echo "after a kill at $STEP and a reboot nginx serves: ${body:-nothing}"; exit 1; }
echo "  killed after $STEP, rebooted: $WANT serves ($body)"
if [[ $STEP == start ]]; then
  [[ "$(shim status --id dis --json | jq "[.[] | select(.state == \"active\")] | length")" == 1 ]] ||
    { echo "dis, enabled again, did not come back at boot: $(shim status --id dis)"; exit 1; }
  [[ "$(systemctl is-active shim-dis.service)" == active ]] || { echo "shim-dis.service is not active"; exit 1; }
  echo "  dis, enabled again: back after the reboot"
fi
' || fail "after a kill at $step and a reboot: see above"
  rev=$want
done
echo "reboot test: PASS"
