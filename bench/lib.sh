# shellcheck shell=bash
# Shared by bench/lmtp.sh, bench/pop3.sh and bench/lmtp-variants.sh: the
# start (root, packages, mail user), the work directory and its cleanup, the
# build of nfsdrop and a load driver, waiting for a listener, private slapd
# and clamd peers (bench_peer), counting the delivered files, a private
# Dovecot's common configuration and the machine lines of the report.
# Source it after `set -euo pipefail` and `cd` to the repository:
#
#   . bench/lib.sh
#   bench_init lmtp.sh
#
# Every function dies (exit 1, the cleanup runs) on failure. Processes the
# script starts go into PIDS; the cleanup stops them by PID, never by name.

# bench_init NAME: the script's name in error messages.
bench_init() {
  BENCH_NAME=$1
  REPO=$PWD
}

log() { printf '== [%3ds] %s\n' "$SECONDS" "$*" >&2; }
die() { printf 'bench/%s: %s\n' "$BENCH_NAME" "$*" >&2; exit 1; }

# bench_require_root WHY: die unless root, saying why root is needed; and
# Go must be there to build nfsdrop.
bench_require_root() {
  [ "$(id -u)" = 0 ] || die "run as root ($1)"
  command -v go >/dev/null || die "go is needed to build nfsdrop"
}

# bench_install PACKAGE...: apt-get install the Debian packages (none: do
# nothing). Postfix is preseeded to "No configuration" so that installing it
# (for smtp-source) starts no system MTA.
bench_install() {
  [ $# -gt 0 ] || return 0
  log "installing $*"
  if [[ " $* " == *" postfix "* ]]; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    echo "postfix postfix/mailname string bench.test" | debconf-set-selections
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# bench_dovecot_version: warn when Dovecot is not 2.3 (the figures compare
# against 2.3).
bench_dovecot_version() {
  dovecot --version | grep -q '^2\.3\.' || log "warning: Dovecot $(dovecot --version) is not 2.3"
}

# bench_mail_user: BENCH_USER (default benchmail) owns all mail; made with
# useradd when missing. Sets MUID and MGID.
bench_mail_user() {
  BENCH_USER=${BENCH_USER:-benchmail}
  if ! id "$BENCH_USER" >/dev/null 2>&1; then
    log "creating system user $BENCH_USER"
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$BENCH_USER"
  fi
  MUID=$(id -u "$BENCH_USER")
  MGID=$(id -g "$BENCH_USER")
}

# bench_require_users PACKAGE USER...: die when a system user that PACKAGE
# brings is missing.
bench_require_users() {
  local pkg=$1 u
  shift
  for u in "$@"; do
    id "$u" >/dev/null 2>&1 || die "user $u missing (it comes with $pkg)"
  done
}

# bench_workdir PREFIX: makes T (in BENCH_DIR, default /var/tmp; its file
# system is what is measured) and arranges the cleanup at exit: the
# script's own bench_stop (if defined), then every PID in PIDS (SIGTERM,
# then wait), then T is removed (kept with BENCH_KEEP=1), through the
# script's bench_remove_mail first if defined.
bench_workdir() {
  T=$(mktemp -d "${BENCH_DIR:-/var/tmp}/$1.XXXXXX")
  chmod 755 "$T" # the servers' unprivileged users read files in it
  PIDS=()
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

bench_cleanup() {
  local rc=$? p
  if declare -F bench_stop >/dev/null; then bench_stop; fi
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "${BENCH_KEEP:-0}" = 1 ]; then
    log "kept $T"
  else
    log "removing $T"
    if declare -F bench_remove_mail >/dev/null; then bench_remove_mail; fi
    rm -rf "$T"
  fi
  log "done"
  exit "$rc"
}

# bench_build DRIVER: builds nfsdrop (from the working tree, or from the
# git revision BENCH_REV through git archive) and bench/DRIVER into $T/bin.
# Sets NFSDROP, LOAD and VERSION.
bench_build() {
  local driver=$1 src=$REPO
  mkdir -p "$T/bin"
  VERSION="$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo '?') (working tree)"
  if [ -n "${BENCH_REV:-}" ]; then
    src=$T/src
    mkdir -p "$src"
    git -C "$REPO" archive "$BENCH_REV" | tar -x -C "$src"
    VERSION="$(git -C "$REPO" rev-parse --short "$BENCH_REV") ($BENCH_REV)"
  fi
  log "building nfsdrop $VERSION and bench/$driver"
  (cd "$src" && go build -o "$T/bin/nfsdrop" ./cmd/nfsdrop) ||
    die "nfsdrop does not build${BENCH_REV:+ at $BENCH_REV}; set BENCH_REV to a revision that builds (HEAD is the last commit)"
  go build -o "$T/bin/$driver" "./bench/$driver"
  NFSDROP=$T/bin/nfsdrop
  LOAD=$T/bin/$driver
}

# bench_mail_roots: NROOT and DROOT, the servers' mail roots under $T
# (nfsdrop's with its mount marker), and Dovecot's run and state
# directories.
bench_mail_roots() {
  NROOT=$T/nfsdrop-mail
  DROOT=$T/dovecot-mail
  mkdir -p "$NROOT" "$DROOT" "$T/dovecot/run" "$T/dovecot/state"
  touch "$NROOT/.nfsdrop-mounted"
}

# bench_two_ports: NPORT (nfsdrop) and DPORT (Dovecot), two free loopback
# ports that differ.
bench_two_ports() {
  NPORT=$("$LOAD" freeport)
  DPORT=$("$LOAD" freeport)
  [ "$NPORT" != "$DPORT" ] || DPORT=$("$LOAD" freeport)
}

# bench_nfsdrop_conf MAIL_ROOT USERS_FILE: the sections every benchmark's
# nfsdrop.toml starts with (log, store, passwd-file userdb); the caller
# adds its protocol's section.
bench_nfsdrop_conf() {
  cat <<EOF
[log]
level = "warn"
[store]
mail_root = "$1"
mount_marker = ".nfsdrop-mounted"
[userdb]
driver = "passwd-file"
passwd_file = "$2"
default_domain = "bench.test"
EOF
}

# bench_count_errors: nerr_n and nerr_d, the error lines in nfsdrop's log
# ($T/nfsdrop.log) and Dovecot's ($T/dovecot/dovecot.log).
bench_count_errors() {
  nerr_n=$(grep -ciE "$BENCH_NFSDROP_ERRORS" "$T/nfsdrop.log" || true)
  nerr_d=$(grep -ciE "$BENCH_DOVECOT_ERRORS" "$T/dovecot/dovecot.log" || true)
}
BENCH_NFSDROP_ERRORS='level=error|"level":"ERROR"'
BENCH_DOVECOT_ERRORS='error|panic|fatal'

# bench_show_errors: the first error lines of each log, if
# bench_count_errors counted any.
bench_show_errors() {
  [ "$nerr_n$nerr_d" != 00 ] || return 0
  grep -iE "$BENCH_NFSDROP_ERRORS" "$T/nfsdrop.log" | head -3 || true
  grep -iE "$BENCH_DOVECOT_ERRORS" "$T/dovecot/dovecot.log" | head -3 || true
}

# bench_nfsdrop_check TOML: die unless `nfsdrop check` accepts it.
bench_nfsdrop_check() {
  "$NFSDROP" check -c "$1" >"${1%.toml}-check.txt" 2>&1 ||
    die "nfsdrop rejects $1: $(tail -5 "${1%.toml}-check.txt")"
}

# bench_listening PORT: something listens (state 0A) on 127.0.0.1:PORT;
# read from /proc, so no probe connection reaches the server.
bench_listening() {
  grep -qiE "^ *[0-9]+: 0100007F:$(printf %04X "$1") 00000000:0000 0A " /proc/net/tcp
}

# bench_wait_port PORT PID NAME LOGFILE: wait up to 10 s until PID listens
# on PORT; die (with the log's tail) if it exits first.
bench_wait_port() {
  local port=$1 pid=$2 name=$3 logf=$4
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || die "$name exited at start: $(tail -5 "$logf")"
    if bench_listening "$port"; then return 0; fi
    sleep 0.1
  done
  die "$name does not listen on port $port"
}

# bench_peer NAME [FLAGS]: starts a private slapd or clamd through
# `$LOAD peer NAME FLAGS` (internal/testenv's Start: the integration
# tests' set-up) and evaluates the assignments it prints (SLAPD_PID,
# LDAP_URI, ... or CLAMD_PID, CLAMD_SOCK, ...; see bench/load). Its
# standard input is a FIFO this shell holds open, so that it stops its
# peer when the script ends even without the cleanup (which sends it
# SIGTERM through PIDS); either way the peer is killed by its PID.
bench_peer() {
  local name=$1 fifo=$T/peer-$1.in env=$T/peer-$1.env err=$T/peer-$1.err pid fd
  shift
  mkfifo "$fifo"
  "$LOAD" peer "$name" "$@" <"$fifo" >"$env" 2>"$err" &
  pid=$!
  PIDS+=("$pid")
  exec {fd}>"$fifo" # unblocks the peer's open of its standard input
  for _ in $(seq 1 1200); do
    if grep -qx 'PEER_READY=1' "$env"; then
      . "$env"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || die "load peer $name failed: $(tail -5 "$err")"
    sleep 0.1
  done
  die "load peer $name not ready after 120 s: $(tail -5 "$err")"
}

# bench_count_mail DIR BODYSIZE: "files small tmp" below DIR = files in
# the Maildirs' new/ and cur/, those smaller than 9/10 of the body (Dovecot
# stores LF line ends, so a file can be smaller than the body sent with
# CRLF), and files left in tmp/.
bench_count_mail() {
  local dir=$1 size=$2 files small tmp
  [ -d "$dir" ] || { echo "0 0 0"; return; }
  files=$(find "$dir" -type f \( -path '*/Maildir/new/*' -o -path '*/Maildir/cur/*' \) | wc -l)
  small=$(find "$dir" -type f \( -path '*/Maildir/new/*' -o -path '*/Maildir/cur/*' \) -size "-$((size * 9 / 10))c" | wc -l)
  tmp=$(find "$dir" -type f -path '*/Maildir/tmp/*' | wc -l)
  echo "$files $small $tmp"
}

# bench_dovecot_conf SCRIPT INSTANCE PROTOCOLS MAILROOT WHAT: the settings
# a private Dovecot shares in every benchmark (its own base_dir and state
# under $T/dovecot, plain text logins, the mail user only, Maildirs under
# MAILROOT, users from $T/users); WHAT names what info_log_path would log.
# The script appends its own settings and services.
bench_dovecot_conf() {
  cat <<EOF
# Private Dovecot instance for bench/$1.
base_dir = $T/dovecot/run
state_dir = $T/dovecot/state
log_path = $T/dovecot/dovecot.log
# $5 are not logged, as nfsdrop at log.level = "warn" does not log them.
info_log_path = /dev/null
instance_name = $2
protocols = $3
listen = 127.0.0.1
ssl = no
auth_mechanisms = plain
disable_plaintext_auth = no
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = $MUID
last_valid_uid = $MUID
first_valid_gid = $MGID
last_valid_gid = $MGID
mail_location = maildir:$4/%d/%n/Maildir
EOF
}

# bench_dovecot_passwd: passdb and userdb on $T/users (the passwd-file
# nfsdrop reads too).
bench_dovecot_passwd() {
  cat <<EOF
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $T/users
}
userdb {
  driver = passwd-file
  args = username_format=%u $T/users
}
EOF
}

# bench_dovecot_check: die unless `dovecot -n` accepts
# $T/dovecot/dovecot.conf (its output stays in doveconf-n.txt).
bench_dovecot_check() {
  dovecot -c "$T/dovecot/dovecot.conf" -n >"$T/dovecot/doveconf-n.txt" 2>"$T/dovecot/doveconf-n.err" ||
    die "dovecot -n rejects the configuration: $(cat "$T/dovecot/doveconf-n.err")"
}

# bench_machine: the report's "machine:" line's figures.
bench_machine() {
  echo "$(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM, kernel $(uname -r)"
}

# bench_tempdir: the report's "temp dir:" line's figures: T, its file
# system and mount options (fsync cost depends on them).
bench_tempdir() {
  echo "$T on $(df -T "$T" | awk 'NR == 2 { print $2, "(" $1 ")" }') mount options $(findmnt -no OPTIONS -T "$T" 2>/dev/null || echo '?')"
}
