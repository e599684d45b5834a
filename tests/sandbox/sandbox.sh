#!/usr/bin/env bash
# Boot a real systemd as PID 1 in fresh namespaces, over a throw-away overlay of
# the host's own root filesystem, so that shim can be tested against a genuine
# systemd + D-Bus on machines whose PID 1 is not systemd (see
# /work/shared/SANDBOX.md for the recipe this implements).
#
# Usage:
#   sandbox.sh up     [--name NAME] [--persist DIR]...   boot, wait until running
#   sandbox.sh exec   [--name NAME] [--env K=V]... -- CMD...
#   sandbox.sh reboot [--name NAME]                      hard reset; /etc, /var persist
#   sandbox.sh down   [--name NAME]                      kill and clean up (idempotent)
#   sandbox.sh pid    [--name NAME]                      host PID of the sandbox's PID 1
#   sandbox.sh status [--name NAME]                      exit 0 if up, print state
#
# exec: runs CMD via nsenter in all the sandbox's namespaces, as root, with a
# clean environment (PATH, HOME=/root, USER, SHELL; TERM, LANG, LC_ALL,
# RUST_LOG, RUST_BACKTRACE, NO_COLOR, COLORTERM passed through; more with
# --env K=V), in the caller's working directory if it exists inside (the
# repository is bind-mounted at the same path), else /root. stdin/stdout/
# stderr are the caller's (a tty works). The exit code is CMD's; 128+N if CMD
# died of signal N (except SIGINT/SIGQUIT: 1); 125 if the sandbox is not up.
# If the exec process itself is killed (e.g. by timeout(1)), CMD gets SIGTERM.
#
# NAME defaults to $SHIM_SANDBOX_NAME or "default". Several names can run at once.
# Environment knobs: SHIM_SANDBOX_BASE (default /tmp/shim-sandbox),
# SHIM_SANDBOX_BOOT_TIMEOUT (seconds, default 30), SHIM_SANDBOX_TMPFS_SIZE
# (size= of the state tmpfs, default 50% of RAM like any tmpfs).
#
# Layout of the state dir $SHIM_SANDBOX_BASE/NAME (itself a tmpfs, so it
# survives reboots of the sandbox but never touches the host's disk):
#   upper/ work/    overlay upper and work dirs (all writes of the sandbox)
#   root/           the overlay (lowerdir=/), the sandbox's /
#   persist/...     backing dirs of the --persist mounts (default /var/lib/shim)
#   pid             host PID of the sandbox's PID 1 (systemd)
#   unshare.pid     host PID of the unshare(1) process that is its parent
#   cgroup          host path of the cgroup v2 subtree the sandbox owns
#   boot.log        stdout/stderr of the sandbox's systemd (console output)
set -euo pipefail

SCRIPT="$(readlink -f "${BASH_SOURCE[0]}")"
# The repository root is two levels above tests/sandbox/, whatever the clone path.
REPO_ROOT="$(cd "$(dirname "$SCRIPT")/../.." && pwd -P)"
BASE="${SHIM_SANDBOX_BASE:-/tmp/shim-sandbox}"
BOOT_TIMEOUT="${SHIM_SANDBOX_BOOT_TIMEOUT:-30}"
SANDBOX_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Directories bind-mounted from the state tmpfs instead of living on the overlay.
# Why: overlayfs refuses an overlayfs as upperdir ("filesystem ... not supported
# as upperdir"), so anything inside the sandbox that mounts its own overlay
# (e.g. shim's per-instance writable layers) must keep its upper dirs on a
# non-overlay filesystem. tmpfs is fine, and the state tmpfs survives reboots.
DEFAULT_PERSIST=(/var/lib/shim)

# Units masked inside the sandbox (symlinks to /dev/null in the overlay's /etc).
MASKED_UNITS=(
  # The getty generator adds a console getty in containers; /dev/console is
  # the host's (rbind of /dev), so a login prompt would land on the VM console.
  getty.target console-getty.service container-getty@.service
  getty@.service serial-getty@.service
  # Periodic maintenance jobs: useless here, and a timer firing in the middle
  # of a test (apt, man-db, fstrim, e2scrub) would only add noise and load.
  apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service
  man-db.timer man-db.service dpkg-db-backup.timer dpkg-db-backup.service
  fstrim.timer fstrim.service e2scrub_all.timer e2scrub_all.service e2scrub_reap.service
  # Nothing to wait for: the sandbox's network is a private loopback.
  systemd-networkd-wait-online.service
  # binfmt_misc is global outside user namespaces: registering the host's
  # binfmt.d entries (python, llvm) from a sandbox would change the host.
  systemd-binfmt.service proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount
  # Installed on the host for other work; slow to start and not needed by shim.
  postgresql.service postgresql@.service
  # Installed with podman: its auto-update job and API socket have no use here (and the
  # auto-update job fails without a registry, marking the sandbox degraded).
  podman-auto-update.service podman-auto-update.timer podman-restart.service
  podman.socket podman.service podman-clean-transient.service
)

die() { echo "sandbox.sh: $*" >&2; exit 1; }
log() { echo "sandbox.sh: $*" >&2; }

usage() {
  sed -n '2,/^set -euo/p' "$SCRIPT" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

# ---------------------------------------------------------------- helpers

# True if $1 is a live process that is the PID 1 of a sandbox: its comm is
# systemd and it lives in another PID namespace than ours. Guards against
# acting on a recycled PID from a stale pid file.
is_sandbox_pid() {
  local pid="$1"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -d "/proc/$pid" ]] || return 1
  [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == systemd ]] || return 1
  [[ "$(readlink "/proc/$pid/ns/pid" 2>/dev/null)" != "$(readlink /proc/self/ns/pid)" ]]
}

read_pid_file() { cat "$1" 2>/dev/null || true; }

sandbox_pid() { read_pid_file "$STATE/pid"; }

require_up() {
  local pid
  pid="$(sandbox_pid)"
  is_sandbox_pid "$pid" || die "sandbox '$NAME' is not up (run: $0 up --name $NAME)"
  echo "$pid"
}

# True if PID $1 is gone or a zombie. Why zombies count: unshare is
# reparented to the host's init once `up` returns, and this VM's init
# (process_api) reaps orphans late or never (zombie unshare processes were
# seen lingering for many minutes). They hold nothing but a PID.
is_gone() {
  local st
  st="$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null || true)"
  [[ -z "$st" || "$st" == Z || "$st" == X ]]
}

# Wait until PID $1 is gone; $2 = timeout in hundredths of a second.
wait_gone() {
  local pid="$1" n="${2:-1000}"
  [[ -n "$pid" ]] || return 0
  until is_gone "$pid"; do
    ((n-- > 0)) || return 1
    sleep 0.01
  done
}

# Mount points under $1 (deepest first), from our mount namespace.
mounts_under() {
  local dir="$1"
  awk -v d="$dir" '{ if ($5 == d || index($5, d "/") == 1) print $5 }' /proc/self/mountinfo |
    awk '{ print length($0) " " $0 }' | sort -rn | cut -d' ' -f2-
}

# The cgroup v2 hierarchy on the host (/sys/fs/cgroup/unified here, where the
# v1 controllers own /sys/fs/cgroup; /sys/fs/cgroup on pure-v2 hosts).
cgroup2_root() {
  findmnt -n -t cgroup2 -o TARGET 2>/dev/null | head -n1
}

# Each sandbox gets its own cgroup v2 subtree, and its cgroup namespace is
# rooted there. Why: without it every sandbox's systemd would see (and manage)
# the host's v2 root, so two sandboxes would fight over /system.slice etc.
sandbox_cgroup_path() {
  local r
  r="$(cgroup2_root)"
  [[ -n "$r" ]] || return 0
  if [[ "$BASE" == /tmp/shim-sandbox ]]; then
    echo "$r/shim-sandbox/$NAME"
  else # same NAME under another SHIM_SANDBOX_BASE must not share the cgroup
    echo "$r/shim-sandbox/$NAME-$(echo "$BASE" | md5sum | cut -c1-8)"
  fi
}

# Remove the cgroup subtree under $1 depth-first (kept: $1 itself if $2=keep).
# Kills leftovers first (cgroup.kill exists since Linux 5.14).
remove_cgroup_tree() {
  local cg="$1" keep="${2:-}" i
  [[ -n "$cg" && -d "$cg" ]] || return 0
  if [[ -w "$cg/cgroup.kill" ]]; then
    echo 1 >"$cg/cgroup.kill" 2>/dev/null || true
  fi
  for i in $(seq 50); do
    # cgroup.procs of a subtree only lists direct members: check them all.
    if ! find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | grep -q .; then
      break
    fi
    sleep 0.1
  done
  # Depth-first: deepest directories first. rmdir works on cgroup dirs even
  # though they contain the kernel's interface files.
  find "$cg" -mindepth 1 -depth -type d -exec rmdir {} \; 2>/dev/null || true
  if [[ -z "$keep" ]]; then
    rmdir "$cg" 2>/dev/null || true
    rmdir "$(dirname "$cg")" 2>/dev/null || true # shared parent, if now empty
  fi
}

# ---------------------------------------------------------------- overlay

mount_overlay() {
  mkdir -p "$STATE/upper" "$STATE/work" "$STATE/root"
  # lowerdir=/ shows the host root filesystem only, not the mounts on top of
  # it (proc, sys, dev, this tmpfs...): the inner setup mounts fresh ones.
  mount -t overlay overlay \
    -o "lowerdir=/,upperdir=$STATE/upper,workdir=$STATE/work" "$STATE/root"
}

# First boot only: configure the sandbox's /etc through the overlay (writes go
# to upper/, the host's /etc is untouched).
prepare_root() {
  local root="$STATE/root" u host
  host=shim-sandbox
  [[ "$NAME" == default ]] || host="shim-sandbox-$NAME"
  echo "$host" >"$root/etc/hostname"
  # A machine-id of its own, so sandboxes do not share the host's journal
  # directory name and each looks like a distinct machine; stable across
  # reboots of the sandbox since it lives in upper/.
  tr -d '-' </proc/sys/kernel/random/uuid >"$root/etc/machine-id"
  mkdir -p "$root/etc/systemd/system"
  for u in "${MASKED_UNITS[@]}"; do
    ln -sfn /dev/null "$root/etc/systemd/system/$u"
  done
  # Remove stale enablement symlinks of masked units (e.g. getty@tty1 in
  # getty.target.wants) so systemd does not warn about them at every boot.
  for u in "${MASKED_UNITS[@]}"; do
    find "$root/etc/systemd/system" -mindepth 2 -name "${u/@./@*.}" -type l -delete 2>/dev/null || true
  done
  # Journal on disk (in upper/) so it survives `reboot` like on a real host.
  mkdir -p "$root/var/log/journal"
  # /dev/kmsg is the host kernel's ring buffer, shared by all sandboxes: with
  # the default ReadKMsg=yes each sandbox's journal would import the host's
  # dmesg and the other sandboxes' journald messages.
  mkdir -p "$root/etc/systemd/journald.conf.d"
  printf '[Journal]\nReadKMsg=no\n' >"$root/etc/systemd/journald.conf.d/50-shim-sandbox.conf"
}

# ---------------------------------------------------------------- boot

# Runs as the child of unshare (PID 1 of the new PID namespace, still with the
# host's root and /proc), sets up the new root and execs systemd.
# Args: STATE REPO_ROOT PERSIST...
inner_boot() {
  local state="$1" repo="$2" root="$1/root" hostpid p src
  shift 2
  # Our PID as seen from the host: /proc is still the host's procfs here and
  # procfs reports PIDs in its own namespace. `read` with a redirection opens
  # /proc/self in this very shell, which is about to exec systemd (same PID).
  read -r hostpid _ </proc/self/stat
  echo "$hostpid" >"$state/pid.tmp"
  mv "$state/pid.tmp" "$state/pid"

  mount -t proc proc "$root/proc"
  # /proc/sys read-only except net/ (per network namespace), as systemd-nspawn
  # does. Why: most other sysctls are global to the kernel, and the sandbox's
  # systemd-sysctl would otherwise apply Debian's fs.protected_* etc. to the
  # host (seen: fs.protected_regular=2 leaking out of a sandbox).
  mount --bind "$root/proc/sys" "$root/proc/sys"
  mount -o remount,bind,ro "$root/proc/sys"
  mount --bind "$root/proc/sys/net" "$root/proc/sys/net"
  mount -o remount,bind,rw "$root/proc/sys/net"
  # A fresh boot ID per boot, as systemd-nspawn does. Why: the kernel's is
  # shared with the host and every earlier boot of the sandbox, so journald
  # would see all sandbox boots as one (`journalctl -b` spanning reboots).
  cat /proc/sys/kernel/random/uuid >"$state/boot_id"
  mount --bind "$state/boot_id" "$root/proc/sys/kernel/random/boot_id"
  mount -o remount,bind,ro "$root/proc/sys/kernel/random/boot_id"
  # A fresh sysfs: it shows the new network namespace's devices (only lo).
  mount -t sysfs sysfs "$root/sys"
  # Pure cgroup v2 inside, rooted at this sandbox's own subtree (cgroup ns).
  mount -t cgroup2 cgroup2 "$root/sys/fs/cgroup"
  mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run"
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
  mount --rbind /dev "$root/dev"
  # Private POSIX shm, not the host's /dev/shm shared by all sandboxes.
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
  # The repository at the same path inside, so `exec` can run target/ builds
  # and keep the caller's working directory. Done here, in the sandbox's mount
  # namespace, so that no bind of the repo ever exists on the host under the
  # state dir (where a careless rm -rf could follow it).
  mkdir -p "$root$repo"
  mount --bind "$repo" "$root$repo"
  for p in "$@"; do
    src="$state/persist$p"
    mkdir -p "$src" "$root$p"
    mount --bind "$src" "$root$p"
  done
  ip link set lo up

  # put_old on the fresh /run tmpfs so nothing is left behind in upper/.
  mkdir "$root/run/.oldroot"
  cd "$root"
  pivot_root . run/.oldroot
  cd /
  umount -l /run/.oldroot
  rmdir /run/.oldroot

  # A clean environment for PID 1; container=... tells systemd it is in a
  # container (skips hardware units, no attempt to own the real machine).
  exec env -i container=other PATH="$SANDBOX_PATH" /lib/systemd/systemd --system
}

# Start the namespaces + systemd in the background and wait until it is running.
boot() {
  local persist=() cg i pid upid st=""
  mapfile -t persist <"$STATE/persist.list"
  cg="$(sandbox_cgroup_path)"
  if [[ -n "$cg" ]]; then
    mkdir -p "$cg"
    echo "$cg" >"$STATE/cgroup"
  fi
  rm -f "$STATE/pid"
  : >"$STATE/boot.log"

  local t0
  t0="$(date +%s.%N)"
  (
    # Enter the sandbox's cgroup before unshare so that it becomes the root of
    # the new cgroup namespace. setsid: detach from the caller's session and
    # terminal so Ctrl-C / hangups there do not reach the sandbox.
    if [[ -n "$cg" ]]; then echo "$BASHPID" >"$cg/cgroup.procs"; fi
    exec setsid unshare --pid --fork --mount --uts --ipc --net --cgroup \
      --propagation private "$SCRIPT" __inner "$STATE" "$REPO_ROOT" "${persist[@]}"
  ) </dev/null >>"$STATE/boot.log" 2>&1 &
  upid=$!
  echo "$upid" >"$STATE/unshare.pid"

  # The inner setup writes the host PID of the sandbox's PID 1.
  for ((i = 0; i < 100; i++)); do
    pid="$(sandbox_pid)"
    [[ -n "$pid" ]] && break
    if ! kill -0 "$upid" 2>/dev/null; then break; fi
    sleep 0.05
  done
  pid="$(sandbox_pid)"
  if [[ -z "$pid" ]]; then
    cat "$STATE/boot.log" >&2
    die "sandbox '$NAME': the inner setup failed before starting systemd (log above)"
  fi

  # Wait for the boot to finish. is-system-running fails with "offline" or an
  # error until systemd listens on its private socket.
  local deadline=$((SECONDS + BOOT_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      cat "$STATE/boot.log" >&2
      die "sandbox '$NAME': systemd (pid $pid) died during boot (log above)"
    fi
    st="$(nsenter -t "$pid" -a systemctl is-system-running 2>/dev/null || true)"
    case "$st" in
      running) break ;;
      degraded | maintenance)
        # A caller that expects a unit to fail (the reboot test's broken service) says so.
        if [[ "$st" == degraded && "${SHIM_SANDBOX_ALLOW_DEGRADED:-}" == 1 ]]; then
          log "sandbox '$NAME' booted degraded, as expected"
          break
        fi
        log "sandbox '$NAME' booted $st; failed units and journal tail:"
        nsenter -t "$pid" -a systemctl --no-pager --failed >&2 || true
        nsenter -t "$pid" -a journalctl --no-pager -n 60 >&2 || true
        die "sandbox '$NAME' is $st (it is still up: inspect with exec, or run down)"
        ;;
    esac
    sleep 0.1
  done
  if [[ "$st" != running && ! ("$st" == degraded && "${SHIM_SANDBOX_ALLOW_DEGRADED:-}" == 1) ]]; then
    nsenter -t "$pid" -a systemctl --no-pager list-jobs >&2 || true
    die "sandbox '$NAME' not running after ${BOOT_TIMEOUT}s (state: ${st:-unknown})"
  fi
  log "sandbox '$NAME' running (pid $pid, boot $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}')s)"
}

# Kill the sandbox (if running) and wait until every process of it is gone.
kill_sandbox() {
  local pid upid cg
  pid="$(sandbox_pid)"
  upid="$(read_pid_file "$STATE/unshare.pid")"
  cg="$(cat "$STATE/cgroup" 2>/dev/null || sandbox_cgroup_path)"
  if is_sandbox_pid "$pid"; then
    # SIGKILL of a PID namespace's init makes the kernel kill everything in
    # the namespace: the equivalent of pulling the power cord.
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 1000 || die "sandbox '$NAME': pid $pid did not die"
  fi
  # unshare exits by itself once its child is gone; only if it is still ours.
  if [[ "$upid" =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$upid/comm" 2>/dev/null)" == unshare ]]; then
    wait_gone "$upid" 500 || kill -KILL "$upid" 2>/dev/null || true
  fi
  # Empty the cgroup subtree (also `exec` leftovers: nsenter's outer process
  # lives there) and remove it, so the next boot starts from a clean tree, as
  # after a real reboot.
  remove_cgroup_tree "$cg" keep
  rm -f "$STATE/pid" "$STATE/unshare.pid"
}

# Unmount everything below the state dir and (with $1=all) the state tmpfs.
unmount_state() {
  local what="$1" m
  local target="$STATE/root"
  [[ "$what" == all ]] && target="$STATE"
  while read -r m; do
    [[ -n "$m" ]] || continue
    umount "$m" 2>/dev/null || umount -l "$m"
  done < <(mounts_under "$target")
  [[ -z "$(mounts_under "$target")" ]] || die "still mounted under $target: $(mounts_under "$target" | tr '\n' ' ')"
}

# ---------------------------------------------------------------- commands

cmd_up() {
  local p pid
  pid="$(sandbox_pid)"
  if is_sandbox_pid "$pid"; then
    die "sandbox '$NAME' is already up (pid $pid); use reboot, or down first"
  fi
  # Leftovers of a crashed run (mounts, cgroups, state): clean them first.
  if [[ -e "$STATE" || -n "$(mounts_under "$STATE")" ]]; then
    log "cleaning up stale state of sandbox '$NAME'"
    cmd_down
  fi
  mkdir -p "$STATE"
  mount -t tmpfs -o "mode=0700${SHIM_SANDBOX_TMPFS_SIZE:+,size=$SHIM_SANDBOX_TMPFS_SIZE}" \
    "shim-sandbox-$NAME" "$STATE"
  printf '%s\n' "${DEFAULT_PERSIST[@]}" "${PERSIST[@]}" | awk 'NF && !seen[$0]++' >"$STATE/persist.list"
  while read -r p; do mkdir -p "$STATE/persist$p"; done <"$STATE/persist.list"
  mount_overlay
  prepare_root
  boot
}

cmd_reboot() {
  [[ -d "$STATE/upper" ]] || die "sandbox '$NAME' was never up (no $STATE/upper)"
  kill_sandbox
  # Remount with the same upper dir: /etc and /var keep their changes, /run
  # and /tmp (tmpfs mounted at boot) start empty, transient units are gone.
  unmount_state root
  mount_overlay
  boot
}

cmd_down() {
  [[ -e "$STATE" || -n "$(mounts_under "$STATE")" ]] || return 0
  kill_sandbox
  local cg
  cg="$(cat "$STATE/cgroup" 2>/dev/null || sandbox_cgroup_path)"
  remove_cgroup_tree "$cg"
  unmount_state all
  # --one-file-system: belt and braces, never descend into a mount.
  rm -rf --one-file-system "$STATE"
  rmdir "$BASE" 2>/dev/null || true
}

cmd_pid() {
  require_up
}

cmd_status() {
  local pid st
  pid="$(sandbox_pid)"
  if ! is_sandbox_pid "$pid"; then
    echo "down"
    return 1
  fi
  st="$(nsenter -t "$pid" -a systemctl is-system-running 2>/dev/null || true)"
  echo "${st:-unknown} pid=$pid state=$STATE"
}

cmd_exec() {
  local pid dir=/root cg
  pid="$(sandbox_pid)"
  if ! is_sandbox_pid "$pid"; then
    # 125, not 1: lets callers tell "sandbox not up" from the command's own
    # failure (same convention as docker/podman run).
    echo "sandbox.sh: sandbox '$NAME' is not up (run: $0 up --name $NAME)" >&2
    exit 125
  fi
  (($# > 0)) || die "exec: no command (usage: exec [--name NAME] -- CMD...)"
  # Same working directory inside if it exists there (the repo is mounted at
  # the same path), else /root.
  if [[ -d "/proc/$pid/root$PWD" ]]; then dir="$PWD"; fi
  local envs=(PATH="$SANDBOX_PATH" HOME=/root USER=root LOGNAME=root SHELL=/bin/bash)
  local v
  for v in TERM LANG LC_ALL COLORTERM NO_COLOR RUST_LOG RUST_BACKTRACE; do
    if [[ -n "${!v:-}" ]]; then envs+=("$v=${!v}"); fi
  done
  envs+=("${EXEC_ENV[@]}")
  # Join the sandbox's cgroup subtree. Why: with plain nsenter the command
  # stays in the host's cgroup, outside the sandbox's cgroup namespace, and
  # sees "0::/../.." in /proc/self/cgroup (confusing for code that parses it,
  # and moving it is refused where cgroup2 is mounted with nsdelegate). Here
  # it shows "0::/sandbox-exec", like a process systemd does not manage.
  cg="$(cat "$STATE/cgroup" 2>/dev/null || true)"
  if [[ -n "$cg" && -d "$cg" ]]; then
    mkdir -p "$cg/sandbox-exec"
    echo $$ >"$cg/sandbox-exec/cgroup.procs"
  fi
  # nsenter forks (to enter the PID namespace) and waits, then exits with the
  # command's exit code (or kills itself with the same signal). It does not
  # forward signals, hence:
  #  - it ignores SIGINT/SIGQUIT (the command, in the same process group,
  #    gets Ctrl-C from the terminal itself; nsenter must not die and leave
  #    it orphaned on the terminal);
  #  - the command gets SIGTERM if nsenter dies (timeout(1), kill of exec),
  #    via PR_SET_PDEATHSIG, so it does not run on unnoticed inside;
  #  - `env --default-signal` undoes the inherited SIG_IGN for the command.
  trap '' INT QUIT
  exec nsenter -t "$pid" -a -r \
    setpriv --pdeathsig TERM \
    env --default-signal=INT,QUIT -i -C "$dir" "${envs[@]}" "$@"
}

# ---------------------------------------------------------------- main

(($# > 0)) || usage
CMD="$1"
shift

if [[ "$CMD" == __inner ]]; then
  inner_boot "$@"
fi

NAME="${SHIM_SANDBOX_NAME:-default}"
PERSIST=()
EXEC_ENV=()
while (($# > 0)); do
  case "$1" in
    --name) NAME="${2:?--name needs a value}"; shift 2 ;;
    --name=*) NAME="${1#--name=}"; shift ;;
    --persist) PERSIST+=("${2:?--persist needs a directory}"); shift 2 ;;
    --env | -e) EXEC_ENV+=("${2:?--env needs KEY=VALUE}"); shift 2 ;;
    --) shift; break ;;
    -h | --help) usage ;;
    *)
      [[ "$CMD" == exec ]] && break # `exec CMD...` without -- also works
      die "unknown argument: $1"
      ;;
  esac
done
[[ "$NAME" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$ ]] || die "bad name '$NAME' (letters, digits, _ . -, max 40)"
for p in "${PERSIST[@]}"; do
  [[ "$p" == /* && "$p" != *..* ]] || die "--persist needs an absolute path: $p"
done
[[ $EUID -eq 0 ]] || die "must run as root"
STATE="$BASE/$NAME"

case "$CMD" in
  up) cmd_up ;;
  exec) cmd_exec "$@" ;;
  reboot) cmd_reboot ;;
  down) cmd_down ;;
  pid) cmd_pid ;;
  status) cmd_status ;;
  *) usage ;;
esac
