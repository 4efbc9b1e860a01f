#!/usr/bin/env bash
# LMTP delivery benchmark of nfsdrop against itself: what the LDAP user
# database (cache warm, cache off), virus scanning with a real clamd, and
# metrics plus per-recipient logging cost, compared with a baseline
# (passwd-file, no scan, no metrics, log level warn), in one run on this
# machine. The load is bench/load lmtp, as in bench/lmtp.sh: 2 KB messages,
# 4 sessions (one connection each, no pipelining), 50 users per
# configuration, one recipient per message.
#
#   sudo bash bench/lmtp-variants.sh                     full run (~5-6 minutes)
#   sudo BENCH_ROUNDS=1 BENCH_ROW_SECONDS=3 bash bench/lmtp-variants.sh   quick smoke run
#
# A row is 10 s of load (BENCH_ROW_SECONDS) on one configuration; 7
# configurations x 3 rounds make 3.5 minutes of load, plus start-up,
# the memory runs and removing the few hundred thousand files made.
#
# Every configuration has its own lmtpd process, all started at the
# beginning and all warmed up (Maildirs created, LDAP cache filled, clamd
# connected) before anything is measured; only the process being measured
# gets load. The configurations are measured back to back in rounds
# (base, ldap, ldap0, scan, obs, met, info), the order rotated by one each
# round so that no configuration always runs first or after the same
# neighbour; the table shows each configuration's median over the rounds
# and its ratio to the baseline's median, and the same for lmtpd's CPU time
# per delivery (user+sys; usr-us is the user part, lmtpd's own code and the
# Go runtime, which moves much less with the machine's load than the
# kernel's part does). Each row also shows how busy the rest of the machine was
# (other%): on a shared machine, rows with much other load are not
# comparable, and 3 rounds cannot always outvote them; look at cpu-x and at
# the rows, or run again. Right after a run (this one's or bench/lmtp.sh's)
# has removed its hundreds of thousands of files, creating files was seen to
# be slower for a while (ext4 allocating inodes: recently_deleted and
# find_inode_bit in perf); leave a few minutes between runs.
#
#   base   passwd-file, scan off, no metrics.listen, log.level warn (baseline)
#   ldap   [userdb] driver ldap, real slapd, cache warm (cache_ttl 24h):
#          issue target >= 0.90 of base
#   ldap0  the same with the lookup cache off (cache_size = 0): every RCPT
#          is a search on slapd (reported, no target)
#   scan   [scan] enabled, action reject, real clamd on a Unix socket with a
#          one-signature database (EICAR), stream_max_length 25M =
#          lmtp.max_message_size (reported, no target); scanning off is base
#   obs    metrics.listen set and log.level info (one log line per
#          recipient): issue target >= 0.95 of base
#   met    metrics.listen only (log warn), and
#   info   log.level info only (no metrics): diagnostic rows that split
#          obs's cost between its two parts
#
# Every configuration has lmtp.max_message_size = "25M" (required by the
# scan configuration, which must have stream_max_length >= it), so that the
# configurations differ only in what the row names.
#
# Checks (a failure makes the command exit 1 after the report): after each
# row the files in new/ and cur/ of the configuration's Maildirs must have
# grown by exactly the deliveries of the row, none smaller than the body,
# none left in tmp/; for obs and met the delivered counter of /metrics must
# have grown by as much, for obs and info the log must have one "delivered"
# line per delivery; after the rounds a message carrying the EICAR test
# string must be refused (554) by scan and stored nowhere.
#
# Memory (after the rounds; BENCH_MEM=0 skips it): four fresh lmtpd
# processes (scan off/on x 1/10 recipients per message) each receive
# BENCH_MEM_MESSAGES 1 MB messages over 4 sessions; the table shows their
# peak RSS (VmHWM) and the distinct inodes among the delivered files. Scanning
# must not keep a copy of the message per recipient: with scan on, 10
# recipients may not raise the peak by half of what 9 extra copies per
# session would take (9 x 1 MB x 4 sessions / 2 = 18 MB) over 1 recipient,
# and the 10 recipients' files must be hard links of one file per message.
#
# Environment:
#   BENCH_ROUNDS        rounds (default 3)
#   BENCH_ROW_SECONDS   duration of each row (default 10): load lmtp send starts no
#                       message after it and counts the deliveries made
#   BENCH_MESSAGES      a fixed number of messages per row instead
#   BENCH_ONLY          configuration ids to measure (base is always added),
#                       e.g. "ldap obs"
#   BENCH_MEM=0         skip the memory measurement
#   BENCH_MEM_MESSAGES  1 MB messages per memory run (default 40)
#   BENCH_PERF=1        after the rounds, record each configuration's lmtpd
#                       with perf (an extra, untimed row each) and print
#                       its top symbols and the share of the functions that
#                       differ between configurations (logging, metrics,
#                       user lookup, scan); the perf.data files stay in the
#                       temporary directory with BENCH_KEEP=1
#   BENCH_FLOOR=0       skip the floor rows: after each round, store/bench_test.go's
#                       BenchmarkDeliver in the same temporary directory, 4
#                       goroutines, one Maildir each, BENCH_FLOOR_FILES files
#                       (default 3000) per row: "store" (store.Deliver alone,
#                       the durable write path lmtpd calls) and "bare" (the
#                       bare durable syscall loop: create, write, fsync,
#                       close, link, unlink, fsync of new/), with their
#                       process's CPU per file. lmtpd's cpu-us minus store's is
#                       what LMTP, the user lookup and the Go runtime's
#                       scheduling add; the kernel's part of the durable file
#                       syscalls follows the machine's load (it doubled
#                       between runs with load average 3 and 12 here) and the
#                       disk's state (on a journal-less ext4, creating files
#                       right after many were deleted costs several times more)
#   BENCH_PPROF=1       run every configuration's lmtpd with a Go CPU profile
#                       (NFSDROP_CPUPROFILE: the whole process life, warm-up
#                       included; 100 samples/s, about 1% of lmtpd's CPU),
#                       print each one's top functions after the rounds and
#                       keep the profiles in BENCH_PPROF_DIR (default: the
#                       current directory) as lmtpd-ID.pprof, for
#                       go tool pprof -top / -list (the binary is built
#                       with symbols, the profile carries them)
#   BENCH_DIR, BENCH_KEEP, BENCH_USER, BENCH_REV: as for bench/lmtp.sh
#
# Must run as root: slapd runs as openldap and clamd as clamav (setpriv:
# bench/load peer starts them through internal/testenv/slapd and
# internal/testenv/clamd, as the integration tests do), and lmtpd chowns
# the mail to BENCH_USER. Needs slapd, ldap-utils, clamav-daemon (installed
# with apt-get when missing) and Go. Never touches the system's slapd, clamd
# or their configuration: each runs with its own files in a directory of
# its own under /tmp, and only the processes started here are killed, by
# PID.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
bench_init lmtp-variants.sh

ROUNDS=${BENCH_ROUNDS:-3}
ROW_SECONDS=${BENCH_ROW_SECONDS:-10}
MEM_MESSAGES=${BENCH_MEM_MESSAGES:-40}
NUSERS=50
SESSIONS=4
SIZE=2048
MAXMSG=25M
LDAP_TARGET=0.90
OBS_TARGET=0.95

bench_require_root "slapd and clamd run as their own users, the mail is chowned to ${BENCH_USER:-benchmail}"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROUNDS must be a positive integer"

# --- packages -------------------------------------------------------------
need=()
for p in slapd:slapd slapadd:slapd slappasswd:slapd ldapsearch:ldap-utils clamd:clamav-daemon setpriv:util-linux curl:curl; do
  command -v "${p%%:*}" >/dev/null || [ -x "/usr/sbin/${p%%:*}" ] || need+=("${p#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
fi
bench_install "${need[@]}"
export PATH=$PATH:/usr/sbin:/sbin
bench_require_users "the slapd / clamav-daemon package" openldap clamav
bench_mail_user

# --- configurations -------------------------------------------------------
# id|label (the measured ones, in round order)
ALL_CONFIGS=(
  "base|passwd-file, scan off, no metrics, log warn"
  "ldap|LDAP userdb, cache warm (cache_ttl 24h)"
  "ldap0|LDAP userdb, cache off (cache_size 0)"
  "scan|clamd scan on (reject, unix socket)"
  "obs|metrics.listen + log info (1 line/rcpt)"
  "met|metrics.listen only (log warn)"
  "info|log info only (no metrics)"
)
CONFIGS=()
for c in "${ALL_CONFIGS[@]}"; do
  id=${c%%|*}
  if [ -z "${BENCH_ONLY:-}" ] || [ "$id" = base ] || [[ " $BENCH_ONLY " == *" $id "* ]]; then
    CONFIGS+=("$c")
  fi
done
IDS=()
declare -A LABEL
for c in "${CONFIGS[@]}"; do IDS+=("${c%%|*}"); LABEL[${c%%|*}]=${c#*|}; done
has() { [[ " ${IDS[*]} " == *" $1 "* ]]; }
NEED_LDAP=0; { has ldap || has ldap0; } && NEED_LDAP=1
NEED_CLAMD=0; { has scan || [ "${BENCH_MEM:-1}" != 0 ]; } && NEED_CLAMD=1

# props ID sets USERDB (passwd-file|ldap), CACHE (on|off), SCAN (0|1),
# METRICS (0|1), LEVEL (warn|info) for a configuration or a memory process.
props() {
  USERDB=passwd-file CACHE=on SCAN=0 METRICS=0 LEVEL=warn
  case $1 in
    base | memoff*) ;;
    ldap) USERDB=ldap ;;
    ldap0) USERDB=ldap CACHE=off ;;
    scan | memon*) SCAN=1 ;;
    obs) METRICS=1 LEVEL=info ;;
    met) METRICS=1 ;;
    info) LEVEL=info ;;
    *) die "unknown configuration $1" ;;
  esac
}
dom_of() { echo "$1.test"; }
MEM_IDS=(memoff1 memoff10 memon1 memon10)

# --- work directory and cleanup -------------------------------------------
# bench_remove_mail (called by the cleanup): hundreds of thousands of
# small files: one rm per user directory, four at a time, is faster than
# one rm -rf.
bench_remove_mail() {
  if [ -d "$T/mail" ]; then
    find "$T/mail" -mindepth 2 -maxdepth 2 -type d -print0 | xargs -0 -r -P 4 -n 16 rm -rf || true
  fi
}
bench_workdir nfsdrop-variants # slapd (openldap) and clamd (clamav) reach their directories in it
bench_build load
FLOOR=${BENCH_FLOOR:-1}
FLOOR_FILES=${BENCH_FLOOR_FILES:-3000}
if [ "$FLOOR" = 1 ]; then
  go test -c -o "$T/bin/store.test" ./store/ || die "cannot build the store benchmark (BENCH_FLOOR=0 skips the floor row)"
fi

NROOT=$T/mail
mkdir -p "$NROOT"
touch "$NROOT/.nfsdrop-mounted"

USED_PORTS=" "
port() {
  local p
  while :; do
    p=$("$LOAD" freeport)
    [[ "$USED_PORTS" == *" $p "* ]] || break
  done
  USED_PORTS+="$p "
  echo "$p"
}

# passwd-file: every passwd-file configuration and memory process has its
# own domain with NUSERS users (bare entries: Maildir is
# mail_root/DOMAIN/LOCAL/Maildir, as for LDAP entries without a mailbox).
{
  for id in "${IDS[@]}" "${MEM_IDS[@]}"; do
    props "$id"
    [ "$USERDB" = passwd-file ] || continue
    for i in $(seq 1 "$NUSERS"); do echo "u$i@$(dom_of "$id"):{PLAIN}x:$MUID:$MGID::::"; done
  done
} >"$T/users"
chmod 644 "$T/users"

# --- slapd ----------------------------------------------------------------
# internal/testenv/slapd.Start, through load peer slapd (bench_peer): its own
# slapd.conf (core, cosine, nis, inetorgperson and nfsdrop's schema; MDB;
# the default ACL of the test helper), the directory loaded with slapadd
# before slapd starts, slapd in the foreground as openldap (setpriv), on a
# loopback port. The script writes the data and checks it was loaded.
LDAP_SUFFIX="dc=example,dc=org"
LDAP_BIND_DN="cn=nfsdrop,ou=services,$LDAP_SUFFIX"
LDAP_BIND_PW=bench-service-secret
SLAPD_PID=
start_slapd() {
  {
    printf 'dn: %s\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n' "$LDAP_SUFFIX"
    printf 'dn: ou=people,%s\nobjectClass: organizationalUnit\nou: people\n\n' "$LDAP_SUFFIX"
    printf 'dn: ou=services,%s\nobjectClass: organizationalUnit\nou: services\n\n' "$LDAP_SUFFIX"
    printf 'dn: %s\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: nfsdrop\nuserPassword: %s\n\n' \
      "$LDAP_BIND_DN" "$(slappasswd -s "$LDAP_BIND_PW")"
    for id in ldap ldap0; do
      for i in $(seq 1 "$NUSERS"); do
        printf 'dn: uid=u%s-%s,ou=people,%s\nobjectClass: inetOrgPerson\nobjectClass: posixAccount\n' "$i" "$id" "$LDAP_SUFFIX"
        printf 'uid: u%s-%s\ncn: u%s\nsn: u%s\nmail: u%s@%s\n' "$i" "$id" "$i" "$i" "$i" "$(dom_of "$id")"
        printf 'uidNumber: %s\ngidNumber: %s\nhomeDirectory: /nonexistent\n\n' "$MUID" "$MGID"
      done
    done
  } >"$T/data.ldif"
  bench_peer slapd -suffix "$LDAP_SUFFIX" -schema "$REPO/contrib/ldap/nfsdrop.schema" -ldif "$T/data.ldif" \
    -extra "index nfsdropAlias eq"
  printf '%s\n' "$LDAP_BIND_PW" >"$T/ldap.password"
  chmod 600 "$T/ldap.password"
  local n
  n=$(ldapsearch -x -LLL -H "$LDAP_URI" -D "$LDAP_BIND_DN" -w "$LDAP_BIND_PW" -b "ou=people,$LDAP_SUFFIX" \
    '(objectClass=inetOrgPerson)' mail | grep -c '^mail: ' || true)
  [ "$n" = $((2 * NUSERS)) ] || die "slapd holds $n users, want $((2 * NUSERS))"
}

# --- clamd ----------------------------------------------------------------
# internal/testenv/clamd.Start, through load peer clamd (bench_peer): a
# database with one signature made from the EICAR string, its own
# clamd.conf, in the foreground as clamav (setpriv); nfsdrop uses the Unix
# socket (CLAMD_SOCK).
EICAR='X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR'
EICAR+='-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*' # in two pieces, so that this file is no test virus itself
CLAMD_PID=
start_clamd() { bench_peer clamd -stream-max-length "$MAXMSG"; }

[ "$NEED_LDAP" = 1 ] && { log "starting slapd"; start_slapd; }
[ "$NEED_CLAMD" = 1 ] && { log "starting clamd"; start_clamd; }

# --- lmtpd processes --------------------------------------------------------
declare -A PORT MPORT PID
write_conf() {
  local id=$1
  props "$id"
  PORT[$id]=$(port)
  MPORT[$id]=
  [ "$METRICS" = 1 ] && MPORT[$id]=$(port)
  {
    printf '[log]\nlevel = "%s"\n' "$LEVEL"
    printf '[store]\nmail_root = "%s"\nmount_marker = ".nfsdrop-mounted"\n' "$NROOT"
    printf '[userdb]\ndriver = "%s"\ndefault_domain = "bench.test"\n' "$USERDB"
    if [ "$USERDB" = passwd-file ]; then
      printf 'passwd_file = "%s"\n' "$T/users"
    else
      printf '[ldap]\nuris = ["%s"]\nbind_dn = "%s"\nbind_password_file = "%s"\nbase_dn = "ou=people,%s"\n' \
        "$LDAP_URI" "$LDAP_BIND_DN" "$T/ldap.password" "$LDAP_SUFFIX"
      if [ "$CACHE" = on ]; then
        printf 'cache_size = 10000\ncache_ttl = "24h"\n'
      else
        printf 'cache_size = 0\n'
      fi
    fi
    printf '[lmtp]\nlisten = ["tcp:127.0.0.1:%s"]\nmax_message_size = "%s"\n' "${PORT[$id]}" "$MAXMSG"
    printf 'max_recipients = 100\nmax_user_concurrency = 0\nmax_connections = 1000\n'
    if [ "$SCAN" = 1 ]; then
      printf '[scan]\nenabled = true\nclamd = ["unix:%s"]\naction = "reject"\n' "$CLAMD_SOCK"
      printf 'stream_max_length = "%s"\non_too_large = "tempfail"\n' "$MAXMSG"
    fi
    if [ "$METRICS" = 1 ]; then
      printf '[metrics]\nlisten = "tcp:127.0.0.1:%s"\n' "${MPORT[$id]}"
    fi
  } >"$T/$id.toml"
  bench_nfsdrop_check "$T/$id.toml"
}

PPROF_DIR=
if [ "${BENCH_PPROF:-0}" = 1 ]; then
  PPROF_DIR=$(cd "${BENCH_PPROF_DIR:-.}" && pwd)
fi
start_lmtpd() {
  local id=$1 prof=
  write_conf "$id"
  [ -n "$PPROF_DIR" ] && prof="$PPROF_DIR/lmtpd-$id.pprof"
  NFSDROP_CPUPROFILE=$prof "$NFSDROP" lmtpd -c "$T/$id.toml" 2>"$T/$id.log" &
  PID[$id]=$!
  PIDS+=("${PID[$id]}")
  for _ in $(seq 1 100); do
    kill -0 "${PID[$id]}" 2>/dev/null || die "lmtpd $id exited at start: $(tail -5 "$T/$id.log")"
    if bench_listening "${PORT[$id]}" && { [ -z "${MPORT[$id]}" ] || bench_listening "${MPORT[$id]}"; }; then return 0; fi
    sleep 0.1
  done
  die "lmtpd $id does not listen on ${PORT[$id]}"
}

stop_lmtpd() {
  kill -TERM "${PID[$1]}" 2>/dev/null || true
  wait "${PID[$1]}" 2>/dev/null || true
}

for id in "${IDS[@]}"; do start_lmtpd "$id"; done
if has ldap; then
  "$NFSDROP" user lookup -c "$T/ldap.toml" "u1@$(dom_of ldap)" >"$T/lookup.txt" 2>&1 ||
    die "nfsdrop user lookup through LDAP failed: $(cat "$T/lookup.txt")"
fi

# --- helpers ----------------------------------------------------------------
TCK=$(getconf CLK_TCK)
ticks() { # PID: user+system clock ticks so far
  if [ -n "$1" ] && [ -r "/proc/$1/stat" ]; then
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" # utime, stime (fields 14, 15)
  else
    echo 0
  fi
}
uticks() { # PID: user clock ticks so far (the part of ticks that is lmtpd's own code, not the kernel's)
  if [ -n "$1" ] && [ -r "/proc/$1/stat" ]; then
    awk '{ sub(/^.*\) /, ""); print $12 }' "/proc/$1/stat"
  else
    echo 0
  fi
}
aux_pid() { # the helper daemon a configuration uses
  props "$1"
  if [ "$USERDB" = ldap ]; then echo "$SLAPD_PID"; elif [ "$SCAN" = 1 ]; then echo "$CLAMD_PID"; fi
}
aux_name() {
  props "$1"
  if [ "$USERDB" = ldap ]; then echo slapd; elif [ "$SCAN" = 1 ]; then echo clamd; fi
}

# count DOMAIN: "files small tmp" = files in new/ and cur/, those smaller
# than 9/10 of the body, and files left in tmp/.
count() { bench_count_mail "$NROOT/$1" "$SIZE"; }
delivered_metric() { # ID: nfsdrop_deliveries_total{outcome="delivered"} summed over codes
  curl -fsS --max-time 5 "http://127.0.0.1:${MPORT[$1]}/metrics" |
    awk '/^nfsdrop_deliveries_total\{/ && /outcome="delivered"/ { s += $NF } END { printf "%.0f\n", s }'
}
delivered_lines() { grep -c 'msg=delivered' "$T/$1.log" || true; }

# send ID [load lmtp send flags]: load on configuration ID's server
send() {
  local id=$1
  shift
  "$LOAD" lmtp send -addr "127.0.0.1:${PORT[$id]}" -sessions "$SESSIONS" -size "$SIZE" \
    -rcpts 1 -users "$NUSERS" -rcpt "u%d@$(dom_of "$id")" "$@" >"$T/driver.out" 2>&1
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# --- warm-up ------------------------------------------------------------------
# 4 messages per user: creates every Maildir, fills the LDAP cache, opens
# slapd's and clamd's connections; then 2 s more of load, since the first
# seconds of load after start-up were seen to be slower (whichever
# configuration came first paid for it). Not measured.
log "warm-up"
for id in "${IDS[@]}"; do
  send "$id" -messages $((4 * NUSERS)) || die "warm-up of $id failed: $(cat "$T/driver.out")"
  send "$id" -duration 2s || die "warm-up of $id failed: $(cat "$T/driver.out")"
done

# --- row length -------------------------------------------------------------------
# Each row lasts ROW_SECONDS (load lmtp send -duration: no message is started
# after it, the ones in flight are finished and counted), whatever the rate;
# or, with BENCH_MESSAGES, is that many messages.
if [ -n "${BENCH_MESSAGES:-}" ]; then
  ROWARGS=(-messages "$BENCH_MESSAGES")
  ROWDESC="$BENCH_MESSAGES messages per row (BENCH_MESSAGES)"
else
  ROWARGS=(-duration "${ROW_SECONDS}s")
  ROWDESC="${ROW_SECONDS} s per row (load lmtp send -duration; BENCH_ROW_SECONDS)"
fi
log "$ROWDESC"

# cpu_busy: "busy total" clock ticks of all CPUs so far (/proc/stat)
cpu_busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }
kv() { grep -o "$1=[0-9.]*" "$T/driver.out" | head -1 | cut -d= -f2; } # a key of load lmtp send's summary

# floor_row ROUND: the store alone and the bare syscall loop (BENCH_FLOOR),
# a row each.
declare -A FLOOR_CPUS FLOOR_RATES
floor_row() {
  local out line rate cpu other b0 w0 b1 w1 kind
  log "round $1/$ROUNDS: store alone and bare syscall loop ($FLOOR_FILES files each)"
  sync
  read -r b0 w0 <<<"$(cpu_busy)"
  out=$(cd "$T" && NFSDROP_BENCH_DIR=$T NFSDROP_BENCH_KEEP=1 "$T/bin/store.test" -test.run '^$' \
    -test.bench "^BenchmarkDeliver\$/^(store|bare)\$/^separate\$/^g$SESSIONS\$" -test.benchtime "${FLOOR_FILES}x" 2>&1) || {
    log "floor rows failed: $(echo "$out" | tail -3)"
    return 0
  }
  read -r b1 w1 <<<"$(cpu_busy)"
  declare -A fcpu frate
  for kind in store bare; do
    line=$(echo "$out" | grep "/$kind/" | grep 'cpu-us/op' | tail -1)
    fcpu[$kind]=$(echo "$line" | awk '{ for (i = 1; i < NF; i++) if ($(i + 1) == "cpu-us/op") printf "%.0f", $i }')
    frate[$kind]=$(echo "$line" | awk '{ for (i = 1; i < NF; i++) if ($(i + 1) == "deliveries/s") printf "%.0f", $i }')
  done
  # other%: during both benchmarks, their own CPU taken out
  other=$(awk -v b=$((b1 - b0)) -v w=$((w1 - w0)) -v c="$((${fcpu[store]:-0} + ${fcpu[bare]:-0}))" \
    -v n="$FLOOR_FILES" -v t="$TCK" 'BEGIN { o = (b - c * n / 1e6 * t) / w * 100; if (o < 0) o = 0; printf "%.0f", o }')
  for kind in store bare; do
    FLOOR_CPUS[$kind]+=" ${fcpu[$kind]}"
    FLOOR_RATES[$kind]+=" ${frate[$kind]}"
    RAW+=("$(printf '%-5s %6s %-6s %7d %6s %9s %8s %7s %8s %7s  %s' "$1" "$(cut -d' ' -f1 /proc/loadavg)" "$kind" "$FLOOR_FILES" - \
      "${frate[$kind]}" "${fcpu[$kind]}" - - "$other" \
      "$([ $kind = store ] && echo "store.Deliver alone" || echo "bare syscall loop"), $SESSIONS goroutines")")
  done
}

# --- measured rounds ------------------------------------------------------------
declare -A RATES CPUS USRS AUXS CHECK
RAW=()
R0=$SECONDS
FAIL=0
for r in $(seq 1 "$ROUNDS"); do
  order=()
  k=${#IDS[@]}
  for j in $(seq 0 $((k - 1))); do order+=("${IDS[$(((j + r - 1) % k))]}"); done
  for id in "${order[@]}"; do
    props "$id"
    dom=$(dom_of "$id")
    read -r f0 _ _ <<<"$(count "$dom")"
    m0=0 l0=0
    [ "$METRICS" = 1 ] && m0=$(delivered_metric "$id")
    [ "$LEVEL" = info ] && l0=$(delivered_lines "$id")
    apid=$(aux_pid "$id")
    log "round $r/$ROUNDS: $id (${LABEL[$id]})"
    sync
    c0=$(ticks "${PID[$id]}")
    u0=$(uticks "${PID[$id]}")
    a0=$(ticks "$apid")
    read -r b0 w0 <<<"$(cpu_busy)"
    ok=1
    send "$id" "${ROWARGS[@]}" || ok=0
    read -r b1 w1 <<<"$(cpu_busy)"
    c1=$(ticks "${PID[$id]}")
    u1=$(uticks "${PID[$id]}")
    a1=$(ticks "$apid")
    [ $ok = 1 ] || log "driver failed on $id: $(tail -3 "$T/driver.out")"
    n=$(kv deliveries)
    secs=$(kv seconds)
    dcpu=$(kv driver_cpu_s)
    [ -n "$n" ] && [ -n "$secs" ] || { n=0 secs=1 dcpu=0; }
    read -r f1 small tmp <<<"$(count "$dom")"
    chk=ok
    [ $ok = 1 ] || chk="driver-failed"
    [ "$n" -gt 0 ] && [ $((f1 - f0)) = "$n" ] || chk="BAD(files+$((f1 - f0))/$n)"
    [ "$small" = 0 ] && [ "$tmp" = 0 ] || chk="$chk,BAD(small=$small,tmp=$tmp)"
    if [ "$METRICS" = 1 ]; then
      m1=$(delivered_metric "$id")
      [ $((m1 - m0)) = "$n" ] || chk="$chk,BAD(metric+$((m1 - m0)))"
    fi
    if [ "$LEVEL" = info ]; then
      l1=$(delivered_lines "$id")
      [ $((l1 - l0)) = "$n" ] || chk="$chk,BAD(loglines+$((l1 - l0)))"
    fi
    [ "$chk" = ok ] || FAIL=1
    [ "$n" -gt 0 ] || n=1 # keep the arithmetic below defined
    rate=$(awk -v n="$n" -v s="$secs" 'BEGIN { printf "%.0f", n / s }')
    cpu=$(awk -v n="$n" -v c=$((c1 - c0)) -v t="$TCK" 'BEGIN { printf "%.0f", c / t / n * 1e6 }')
    usr=$(awk -v n="$n" -v c=$((u1 - u0)) -v t="$TCK" 'BEGIN { printf "%.0f", c / t / n * 1e6 }')
    aux=$(awk -v n="$n" -v c=$((a1 - a0)) -v t="$TCK" 'BEGIN { printf "%.0f", c / t / n * 1e6 }')
    # other: CPU busy on the machine outside lmtpd, its helper and the
    # driver (kernel threads flushing our writes, other users' load), in %
    # of all CPUs
    other=$(awk -v b=$((b1 - b0)) -v w=$((w1 - w0)) -v c=$((c1 - c0 + a1 - a0)) -v d="$dcpu" -v t="$TCK" \
      'BEGIN { o = (b - c - d * t) / w * 100; if (o < 0) o = 0; printf "%.0f", o }')
    RATES[$id]+=" $rate"
    CPUS[$id]+=" $cpu"
    USRS[$id]+=" $usr"
    AUXS[$id]+=" $aux"
    [ "${CHECK[$id]:-ok}" = ok ] && CHECK[$id]=$chk
    RAW+=("$(printf '%-5s %6s %-6s %7d %6.1f %9s %8s %7s %8s %7s  %s' "$r" "$(cut -d' ' -f1 /proc/loadavg)" "$id" "$n" "$secs" "$rate" "$cpu" "$usr" \
      "$([ -n "$apid" ] && echo "$aux" || echo -)" "$other" "$chk")")
  done
  [ "$FLOOR" = 1 ] && floor_row "$r"
done

R1=$SECONDS

# --- EICAR probe ------------------------------------------------------------------
PROBE=""
if has scan; then
  read -r f0 _ _ <<<"$(count "$(dom_of scan)")"
  if "$LOAD" lmtp send -addr "127.0.0.1:${PORT[scan]}" -sessions 1 -messages 1 -size "$SIZE" -rcpts 1 -users 1 \
    -rcpt "u%d@$(dom_of scan)" -body-line "$EICAR" >"$T/probe.out" 2>&1; then
    PROBE="FAIL: a message with the EICAR string was accepted by scan"
    FAIL=1
  elif grep -q ': 554 5\.7\.1' "$T/probe.out"; then
    PROBE="ok: refused, $(grep -o '554 5\.7\.1.*' "$T/probe.out" | head -1)"
  else
    PROBE="FAIL: unexpected answer: $(tail -1 "$T/probe.out")"
    FAIL=1
  fi
  read -r f1 _ _ <<<"$(count "$(dom_of scan)")"
  [ "$f1" = "$f0" ] || { PROBE="$PROBE; FAIL: $((f1 - f0)) file(s) stored"; FAIL=1; }
fi

# --- profiles (BENCH_PERF=1) -----------------------------------------------------
PERF_OUT=()
# perf_summary ID: lmtpd's top self-time symbols, and the inclusive share of
# the functions that differ between the configurations.
PERF_PARTS='^(os\.\(\*File\)\.Sync|lmtp\.\(\*session\)\.logRcpt|log/slog\.\(\*Logger\)\.log|internal/metrics\.\(\*Metrics\)\.Recipient|internal/metrics\.instrumentedDB\.Lookup|internal/scan\.\(\*Scanner\)\.scan|internal/backend\.\(\*transaction\)\.AddRecipient|internal/userdb\.\(\*(LDAP|PasswdFile)\)\.Lookup|internal/userdb\.mailboxRule\.confine|github\.com/go-ldap/ldap/v3\.\(\*Conn\)\.Search|runtime\.gcBgMarkWorker)$'
perf_summary() {
  echo "    top self time:"
  grep -E '^ +[0-9.]+%' "$T/perf-$1-self.txt" | awk '{ print "     ", $1, $3 }' | head -6 || true
  echo "    inclusive (self + callees) share of the parts that differ between configurations:"
  grep -E '^ +[0-9.]+%' "$T/perf-$1-children.txt" | awk '{ sub("^github.com/nfsdrop/nfsdrop/", "", $4); print $1, $4 }' |
    PERF_PARTS=$PERF_PARTS awk '$2 ~ ENVIRON["PERF_PARTS"] { print "     ", $1, $2 }' || true
}
if [ "${BENCH_PERF:-0}" = 1 ]; then
  command -v perf >/dev/null || die "BENCH_PERF=1 needs perf (linux-perf)"
  for id in "${IDS[@]}"; do
    log "perf: $id"
    perf record -F 997 -g -p "${PID[$id]}" -o "$T/perf-$id.data" >"$T/perf-$id.log" 2>&1 &
    ppid=$!
    sleep 0.5
    send "$id" "${ROWARGS[@]}" || log "driver failed on $id during perf: $(tail -1 "$T/driver.out")"
    kill -INT "$ppid" 2>/dev/null || true
    wait "$ppid" 2>/dev/null || true
    perf report -i "$T/perf-$id.data" --stdio --no-children --sort symbol -g none --percent-limit 1 \
      >"$T/perf-$id-self.txt" 2>/dev/null || true
    perf report -i "$T/perf-$id.data" --stdio --children --sort symbol -g none --percent-limit 0.2 \
      >"$T/perf-$id-children.txt" 2>/dev/null || true
    PERF_OUT+=("--- $id: $T/perf-$id.data" "$(perf_summary "$id")")
  done
fi

# --- Go CPU profiles (BENCH_PPROF=1) ------------------------------------------------
# lmtpd writes its profile when it stops: stop the measured ones now.
PPROF_OUT=()
if [ -n "$PPROF_DIR" ]; then
  for id in "${IDS[@]}"; do
    stop_lmtpd "$id"
    PPROF_OUT+=("--- $id: $PPROF_DIR/lmtpd-$id.pprof (warm-up and every row)"
      "$(go tool pprof -top -nodecount 25 "$PPROF_DIR/lmtpd-$id.pprof" 2>&1 | sed -n '/^Showing\|flat%/,$p' | sed 's/^/    /')")
  done
fi

# --- memory -----------------------------------------------------------------------
MEM=()
if [ "${BENCH_MEM:-1}" != 0 ]; then
  declare -A HWM
  for id in "${MEM_IDS[@]}"; do
    rc=${id#memon}
    rc=${rc#memoff}
    log "memory: $id ($MEM_MESSAGES x 1 MB, $rc rcpts/msg)"
    start_lmtpd "$id"
    dom=$(dom_of "$id")
    "$LOAD" lmtp send -addr "127.0.0.1:${PORT[$id]}" -sessions "$SESSIONS" -messages "$NUSERS" -size "$SIZE" \
      -rcpts 1 -users "$NUSERS" -rcpt "u%d@$dom" >"$T/driver.out" 2>&1 || die "memory warm-up failed: $(cat "$T/driver.out")"
    rss0=$(awk '/^VmRSS:/ { print $2 }' "/proc/${PID[$id]}/status")
    read -r f0 _ _ <<<"$(count "$dom")"
    ok=1
    "$LOAD" lmtp send -addr "127.0.0.1:${PORT[$id]}" -sessions "$SESSIONS" -messages "$MEM_MESSAGES" -size $((1 << 20)) \
      -rcpts "$rc" -users "$NUSERS" -rcpt "u%d@$dom" >"$T/driver.out" 2>&1 || ok=0
    hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/${PID[$id]}/status")
    HWM[$id]=$hwm
    stop_lmtpd "$id"
    read -r f1 _ tmp <<<"$(count "$dom")"
    # the run's files: those of 1 MB (the warm-up's are 2 KB)
    inodes=$(find "$NROOT/$dom" -type f \( -path '*/Maildir/new/*' -o -path '*/Maildir/cur/*' \) -size +1000k -printf '%i\n' | sort -u | wc -l)
    chk=ok
    [ $ok = 1 ] || chk="driver-failed($(tail -1 "$T/driver.out"))"
    [ $((f1 - f0)) = $((MEM_MESSAGES * rc)) ] || chk="$chk,BAD(files+$((f1 - f0))/$((MEM_MESSAGES * rc)))"
    [ "$tmp" = 0 ] || chk="$chk,BAD(tmp=$tmp)"
    [ "$inodes" = "$MEM_MESSAGES" ] || chk="$chk,BAD(inodes=$inodes, want $MEM_MESSAGES: one file per message)"
    [ "$chk" = ok ] || FAIL=1
    scanning=off
    [[ $id == memon* ]] && scanning=on
    MEM+=("$(printf '%-4s %5s %6d %8.1f %9.1f %9.1f %7d %7d  %s' "$scanning" "$rc" $((MEM_MESSAGES * rc)) \
      "$(awk -v k="$rss0" 'BEGIN { print k / 1024 }')" "$(awk -v k="$hwm" 'BEGIN { print k / 1024 }')" \
      "$(awk -v a="$hwm" -v b="$rss0" 'BEGIN { print (a - b) / 1024 }')" $((f1 - f0)) "$inodes" "$chk")")
  done
  # scan on: 10 recipients against 1; half of 9 copies of 1 MB per session
  lim=$((9 * 1024 * SESSIONS / 2))
  d=$((${HWM[memon10]} - ${HWM[memon1]}))
  if [ "$d" -lt "$lim" ]; then
    MEMVERDICT="ok: scan on, 10 rcpts vs 1: peak RSS $(awk -v d="$d" 'BEGIN { printf "%+.1f", d / 1024 }') MB (limit +$((lim / 1024)) MB); scan on vs off at 10 rcpts: $(awk -v d=$((${HWM[memon10]} - ${HWM[memoff10]})) 'BEGIN { printf "%+.1f", d / 1024 }') MB"
  else
    MEMVERDICT="FAIL: scan on, 10 rcpts vs 1: peak RSS +$((d / 1024)) MB (limit +$((lim / 1024)) MB): a copy per recipient?"
    FAIL=1
  fi
fi

# --- report -----------------------------------------------------------------------
nerr=0
for id in "${IDS[@]}"; do
  n=$(grep -ciE 'level=error' "$T/$id.log" || true)
  nerr=$((nerr + n))
done
echo
echo "nfsdrop $VERSION, LMTP variants, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "command: ${BENCH_ROUNDS:+BENCH_ROUNDS=$BENCH_ROUNDS }${BENCH_ROW_SECONDS:+BENCH_ROW_SECONDS=$BENCH_ROW_SECONDS }${BENCH_MESSAGES:+BENCH_MESSAGES=$BENCH_MESSAGES }${BENCH_ONLY:+BENCH_ONLY=\"$BENCH_ONLY\" }${BENCH_PERF:+BENCH_PERF=$BENCH_PERF }${BENCH_PPROF:+BENCH_PPROF=$BENCH_PPROF }bash bench/lmtp-variants.sh"
echo "machine: $(bench_machine), $(go version | awk '{ print $3 }')"
echo "load average (1/5/15 min) at start of runs: $LOAD_START, at end: $(cut -d' ' -f1-3 /proc/loadavg) (other load on the machine skews the rates; the CPU columns less so)"
echo "temp dir: $(bench_tempdir)"
echo "slapd: $( [ "$NEED_LDAP" = 1 ] && { slapd -VV 2>&1 | head -1 | sed 's/^@(#) \$//; s/\$$//' | tr -s ' \t' ' '; } || echo 'not used')"
echo "clamd: $( [ "$NEED_CLAMD" = 1 ] && clamd --version 2>/dev/null || echo 'not used'), one-signature database, unix socket"
echo "load: bench/load lmtp, $SESSIONS sessions (one connection each, no pipelining), $SIZE-byte bodies, 1 rcpt/msg, $NUSERS users per configuration"
echo "rows: $ROWDESC; $ROUNDS rounds, order rotated each round; the rounds took $((R1 - R0)) s (started at ${R0} s)"
echo "rate = deliveries / wall-clock seconds of the driver; cpu = lmtpd user+sys microseconds per delivery (usr: the user part, lmtpd's own code;"
echo "the rest is the kernel's, mostly the durable file syscalls: compare go test -bench Deliver/bare ./store/, cpu-us/op); aux = cpu for slapd (ldap*) or clamd (scan);"
echo "other% = CPU time of everything else on the machine (kernel flush threads, other users' load) during the row, in % of all CPUs"
echo
echo "per row, in the order run:"
printf '%-5s %6s %-6s %7s %6s %9s %8s %7s %8s %7s  %s\n' round load1 id dlv secs rate/s cpu-us usr-us aux-us other% "files checked"
printf '%s\n' "${RAW[@]}"
echo
echo "summary (medians over $ROUNDS rounds; ratio = median rate / base's median rate; cpu-x = median cpu-us / base's):"
printf '%-6s %-42s %7s %6s %7s %6s %7s %10s  %-13s %-22s %s\n' id configuration "rate/s" ratio "cpu-us" "cpu-x" "usr-us" "aux-us" target "rates per round" "checks"
bm=$(echo "${RATES[base]}" | median)
bc=$(echo "${CPUS[base]}" | median)
for id in "${IDS[@]}"; do
  m=$(echo "${RATES[$id]}" | median)
  c=$(echo "${CPUS[$id]}" | median)
  a=-
  [ -n "$(aux_pid "$id")" ] && a="$(echo "${AUXS[$id]}" | median | awk '{ printf "%.0f", $1 }') $(aux_name "$id")"
  ratio=$(awk -v a="$m" -v b="$bm" 'BEGIN { printf "%.3f", a / b }')
  cx=$(awk -v a="$c" -v b="$bc" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
  target=-
  case $id in
    ldap) t=$LDAP_TARGET ;;
    obs) t=$OBS_TARGET ;;
    *) t= ;;
  esac
  if [ -n "$t" ]; then
    target=$(awk -v r="$ratio" -v t="$t" 'BEGIN { printf "%s%s", (r >= t ? "met" : "MISSED"), ">=" t }')
  fi
  printf '%-6s %-42s %7.0f %6s %7.0f %6s %7.0f %10s  %-13s %-22s %s\n' "$id" "${LABEL[$id]}" "$m" "$ratio" "$c" "$cx" "$(echo "${USRS[$id]}" | median)" "$a" \
    "$target" "$(echo "${RATES[$id]}" | sed 's/^ //')" "${CHECK[$id]}"
done
for kind in store bare; do
  [ -n "${FLOOR_CPUS[$kind]:-}" ] || continue
  fc=$(echo "${FLOOR_CPUS[$kind]}" | median)
  printf '%-6s %-42s %7.0f %6s %7.0f %6s %7s %10s  %-13s %-22s %s\n' "$kind" \
    "$([ $kind = store ] && echo "store.Deliver alone (go test -bench)" || echo "bare syscall loop (go test -bench)")" \
    "$(echo "${FLOOR_RATES[$kind]}" | median)" - "$fc" "$(awk -v a="$fc" -v b="$bc" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')" - - - \
    "$(echo "${FLOOR_RATES[$kind]}" | sed 's/^ //')" "$SESSIONS goroutines, one Maildir each"
done
[ -n "$PROBE" ] && { echo; echo "EICAR probe on scan: $PROBE"; }
if [ ${#MEM[@]} -gt 0 ]; then
  echo
  echo "memory: fresh lmtpd per line, $MEM_MESSAGES messages of 1 MB over $SESSIONS sessions (after a 2 KB warm-up); RSS in MB"
  printf '%-4s %5s %6s %8s %9s %9s %7s %7s  %s\n' scan rcpts dlv "rss-pre" "peak-rss" "peak-pre" files inodes checks
  printf '%s\n' "${MEM[@]}"
  echo "$MEMVERDICT"
fi
if [ ${#PERF_OUT[@]} -gt 0 ]; then
  echo
  echo "perf (BENCH_PERF=1, one extra untimed row per configuration):"
  printf '%s\n' "${PERF_OUT[@]}"
fi
if [ ${#PPROF_OUT[@]} -gt 0 ]; then
  echo
  echo "Go CPU profiles (BENCH_PPROF=1):"
  printf '%s\n' "${PPROF_OUT[@]}"
fi
echo
echo "error lines in lmtpd logs: $nerr"
[ "$nerr" = 0 ] || for id in "${IDS[@]}"; do grep -iE 'level=error' "$T/$id.log" | head -2 || true; done
if [ "$FAIL" != 0 ]; then
  echo "FAIL: a check failed (see 'checks', the EICAR probe and the memory lines)" >&2
  exit 1
fi
