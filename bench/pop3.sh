#!/usr/bin/env bash
# POP3 benchmark: nfsdrop's POP3 server (nfsdrop pop3d) and Dovecot 2.3's
# pop3, side by side, in one run, on this machine, driven by the same
# client (bench/load pop3, raw POP3).
#
#   sudo bash bench/pop3.sh                 full run (2-6 minutes on 2 busy cores)
#   sudo BENCH_IDLE=500 bash bench/pop3.sh  smaller idle-session scenario
#
# Environment:
#   BENCH_DIR     where the temporary directory is made (default /var/tmp);
#                 it is printed with its file system
#   BENCH_KEEP=1  keep the temporary directory (mail, logs, configs)
#   BENCH_USER    unprivileged user that owns all mail (default benchmail,
#                 created with useradd if missing)
#   BENCH_BIG     messages in scenario 1's mailbox (default 100000)
#   BENCH_MID     messages in scenarios 2 and 3's mailbox (default 10000)
#   BENCH_IDLE    idle sessions in scenario 4 (default 5000; 0 skips it)
#   BENCH_REPEAT  repeat sessions measured in scenarios 1b and 2b; the
#                 median is shown (default 7)
#   BENCH_REV     build nfsdrop from this git revision (git archive) instead
#                 of the working tree
#
# Scenarios (each server has its own copy of identical mail: same file
# names, same content, written by `load pop3 fill` into new/, as a delivery
# agent leaves it):
#   1  login (USER/PASS) + STAT + UIDL (+ QUIT) on a mailbox of BENCH_BIG
#      2 KB messages: 1a the first session after the messages were written
#      (nfsdrop just started, so no cached listing; Dovecot has no index and
#      no dovecot-uidlist yet, and moves the messages from new/ to cur/ in
#      that session), 1b a repeat session (median of BENCH_REPEAT). Before
#      them each server had one warm-up session on another, 10-message
#      mailbox (processes started, user file read). The time runs from
#      connect() to the QUIT reply and includes reading the whole UIDL
#      listing; the client only buffers the ids, and checks them afterwards.
#   2  the same on BENCH_MID 4 KB messages.
#   3  RETR of every message of scenario 2's mailbox in one session: 3a one
#      command at a time (wait for each message), 3b pipelined 32 at a time.
#      The time is from the first RETR to the end of the last message.
#   4  BENCH_IDLE sessions open at once: 4a connected (greeting read, not
#      logged in), 4b logged in, each to its own small mailbox (2 messages).
#      Memory per session = (resident memory with the sessions open - before)
#      / sessions: nfsdrop's VmRSS; for Dovecot the sum of VmRSS of the
#      master and all its processes (pop3-login, pop3, auth, anvil, ...),
#      and the sum of their Pss (smaps_rollup: shared pages divided among
#      the processes sharing them), which is the fairer figure for many
#      processes. Both servers are restarted before 4a and before 4b, so
#      heap freed by earlier scenarios cannot hide the growth. (Meanwhile the
#      mail of scenarios 1-3 is removed in the background.)
#
# Files are named <sec>.M<usec>P<pid>Q<n>R<rand>.bench,S=<size>,W=<crlf size>,
# so both servers take the sizes from the name. nfsdrop's listing cache does
# not cache a directory whose mtime is less than 2 s old, so the script waits
# until the prefill is more than 2 s old (plus a sync) before the servers
# start; the kernel's page and dentry caches are not dropped (the files were
# just written), so "first session" means cold for the servers, not for the
# kernel.
#
# Checks (a failure makes the command exit 1 after the table): STAT and UIDL
# count exactly the messages written, the UIDLs are distinct, and RETR
# returns, message by message, the octets LIST announced (the bodies contain
# a line starting with "." so byte-stuffing is exercised); in 4 every
# session is open (and in 4b logged in, which for nfsdrop means its lock
# file exists, for Dovecot a pop3 process).
#
# Must run as root (Dovecot switches to BENCH_USER and refuses uid 0;
# nfsdrop reads as root). Installs dovecot-core and dovecot-pop3d with
# apt-get when missing. Needs Go.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
bench_init pop3.sh

BIG=${BENCH_BIG:-100000}
MID=${BENCH_MID:-10000}
IDLE=${BENCH_IDLE:-5000}
REPEAT=${BENCH_REPEAT:-7}
PIPELINE=32

bench_require_root "Dovecot will not run mail processes as uid 0"
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -ge $((IDLE * 2 + 1000)) ] || log "warning: ulimit -n $(ulimit -n) may be too low for $IDLE sessions"

# --- packages -------------------------------------------------------------
need=()
[ -x /usr/sbin/dovecot ] || need+=(dovecot-core)
[ -x /usr/lib/dovecot/pop3 ] || need+=(dovecot-pop3d)
bench_install "${need[@]}"
bench_dovecot_version
bench_mail_user
bench_require_users dovecot-core dovecot dovenull

# --- work directory and cleanup -------------------------------------------
NPID=
DPID=
IPID=
RMPID=
# bench_stop (called by the cleanup): the servers are restarted during the
# run, so their PIDs are kept here rather than in PIDS.
bench_stop() {
  local p
  for p in $IPID $NPID $DPID; do kill -TERM "$p" 2>/dev/null || true; done
  for p in $IPID $NPID $DPID $RMPID; do wait "$p" 2>/dev/null || true; done
}
bench_workdir nfsdrop-pop3bench
bench_build load

bench_mail_roots

# --- users and mail ----------------------------------------------------------
# u1@big.test: scenario 1; u1@mid.test: 2 and 3; w1@warm.test: warm-up;
# i1..iN@idle.test: scenario 4b.
{
  for u in u1@big.test u1@mid.test w1@warm.test; do echo "$u:{PLAIN}x:$MUID:$MGID::::"; done
  for i in $(seq 1 "$IDLE"); do echo "i$i@idle.test:{PLAIN}x:$MUID:$MGID::::"; done
} >"$T/users"
chmod 644 "$T/users"

md() { echo "$1/$2/u1/Maildir"; } # md ROOT DOMAIN
log "prefill: $BIG x 2 KB messages (big.test), $MID x 4 KB (mid.test), 10 (warm.test), $IDLE mailboxes x 2 x 1 KB (idle.test); one copy per server"
"$LOAD" pop3 fill -n "$BIG" -size 2048 "$(md "$NROOT" big.test)/new" "$(md "$DROOT" big.test)/new" >/dev/null
"$LOAD" pop3 fill -n "$MID" -size 4096 "$(md "$NROOT" mid.test)/new" "$(md "$DROOT" mid.test)/new" >/dev/null
"$LOAD" pop3 fill -n 10 -size 2048 "$NROOT/warm.test/w1/Maildir/new" "$DROOT/warm.test/w1/Maildir/new" >/dev/null
if [ "$IDLE" -gt 0 ]; then
  "$LOAD" pop3 fill -users "$IDLE" -n 2 -size 1024 "$NROOT/idle.test/i%d/Maildir/new" "$DROOT/idle.test/i%d/Maildir/new" >/dev/null
fi
chown -R "$MUID:$MGID" "$NROOT" "$DROOT"
FILLED=$(date +%s.%N)
sync
# nfsdrop's listing cache ignores a directory changed in the last 2 s: make
# sure the first session could cache (more than 2 s, with a margin).
rest=$(awk -v a="$FILLED" -v b="$(date +%s.%N)" 'BEGIN { r = 3 - (b - a); print (r > 0 ? r : 0) }')
log "waiting ${rest}s so the Maildirs are more than 2 s old (nfsdrop caches no younger directory)"
sleep "$rest"

# --- servers ----------------------------------------------------------------
bench_two_ports
LIMIT=$((IDLE + 1000))

{
  bench_nfsdrop_conf "$NROOT" "$T/users"
  cat <<EOF
[pop3]
listen = ["tcp:127.0.0.1:$NPORT"]
allow_plaintext = true
trusted_networks = ["127.0.0.0/8"]
idle_timeout = "10m"
max_sessions = $LIMIT
max_per_ip = $LIMIT
EOF
} >"$T/nfsdrop.toml"
bench_nfsdrop_check "$T/nfsdrop.toml"

{
  bench_dovecot_conf pop3.sh nfsdrop-pop3bench pop3 "$DROOT" Logins
  cat <<EOF
# pop3_uidl_format, pop3_lock_session, mail_fsync: Dovecot's defaults
# (%08Xu%08Xv, no, optimized).
default_client_limit = $((2 * LIMIT))
EOF
  bench_dovecot_passwd
  cat <<EOF
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = $DPORT
  }
  # "high-performance mode": long-lived login processes, many clients each
  service_count = 0
  client_limit = $LIMIT
  process_min_avail = 2
}
service pop3 {
  process_limit = $LIMIT
}
EOF
} >"$T/dovecot/dovecot.conf"
bench_dovecot_check

start_nfsdrop() {
  "$NFSDROP" pop3d -c "$T/nfsdrop.toml" 2>>"$T/nfsdrop.log" &
  NPID=$!
  bench_wait_port "$NPORT" "$NPID" nfsdrop "$T/nfsdrop.log"
}
stop_nfsdrop() {
  kill -TERM "$NPID"
  wait "$NPID" 2>/dev/null || true
  NPID=
}
start_dovecot() {
  dovecot -c "$T/dovecot/dovecot.conf" -F 2>>"$T/dovecot/stderr.log" &
  DPID=$!
  bench_wait_port "$DPORT" "$DPID" dovecot "$T/dovecot/dovecot.log"
}
stop_dovecot() {
  local kids k alive
  kids=$(pgrep -P "$DPID" || true)
  kill -TERM "$DPID"
  wait "$DPID" 2>/dev/null || true
  DPID=
  for _ in $(seq 1 100); do # its processes go with it
    alive=0
    for k in $kids; do kill -0 "$k" 2>/dev/null && { alive=1; break; }; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
}
port_of() { if [ "$1" = nfsdrop ]; then echo "$NPORT"; else echo "$DPORT"; fi; }

log "starting nfsdrop pop3d on 127.0.0.1:$NPORT and Dovecot on 127.0.0.1:$DPORT"
start_nfsdrop
start_dovecot

FAIL=0
RESULTS=()
NOTES=()
# row ID LABEL NFSDROP DOVECOT TARGET CHECK: ratio = nfsdrop / Dovecot.
# TARGET "<=X" or ">=X" (against nfsdrop's figure), or "" for none;
# ">=dovecot" means at least Dovecot's figure.
row() {
  local id=$1 label=$2 n=$3 d=$4 target=$5 chk=$6 ratio verdict=""
  ratio=$(awk -v a="$n" -v b="$d" 'BEGIN { if (b + 0 > 0 && a != "-") printf "%.2f", a / b; else print "-" }')
  case $target in
    "") verdict="" ;;
    ">=dovecot") verdict=$(awk -v a="$n" -v b="$d" 'BEGIN { print (a + 0 >= b + 0 ? "met" : "MISSED") }')
      target=">= Dovecot" ;;
    "<="*) verdict=$(awk -v a="$n" -v t="${target#<=}" 'BEGIN { print (a != "-" && a + 0 <= t + 0 ? "met" : "MISSED") }')
      target="<= ${target#<=}" ;;
    ">="*) verdict=$(awk -v a="$n" -v t="${target#>=}" 'BEGIN { print (a != "-" && a + 0 >= t + 0 ? "met" : "MISSED") }')
      target=">= ${target#>=}" ;;
  esac
  RESULTS+=("$(printf '%-3s %-56s %9s %9s %6s  %-12s %-6s %s' "$id" "$label" "$n" "$d" "$ratio" "$target" "$verdict" "$chk")")
}
kv() { sed -n -E "s/(^|.* )$1=([^ ]*).*/\2/p" | head -1; } # kv KEY < line

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# --- warm-up --------------------------------------------------------------------
# One session each on a 10-message mailbox: Dovecot's auth and pop3 binary
# are loaded, nfsdrop has read its user file. Not measured; the mailboxes of
# scenarios 1-3 are not touched.
log "warm-up"
for s in nfsdrop dovecot; do
  "$LOAD" pop3 session -addr "127.0.0.1:$(port_of $s)" -user w1@warm.test -expect 10 >"$T/warm-$s.out" 2>&1 ||
    die "warm-up on $s failed: $(cat "$T/warm-$s.out")"
done

# --- scenarios 1 and 2: login + STAT + UIDL ---------------------------------------
# listing ID DOMAIN COUNT TARGET_FIRST TARGET_REPEAT
listing() {
  local id=$1 dom=$2 count=$3 tfirst=$4 trepeat=$5 s
  declare -A first rep chk
  for s in nfsdrop dovecot; do
    log "$id: $s: first session on $dom ($count messages)"
    chk[$s]=ok
    if "$LOAD" pop3 session -addr "127.0.0.1:$(port_of $s)" -user "u1@$dom" -expect "$count" >"$T/$id-$s-first.out" 2>&1; then
      first[$s]=$(kv seconds <"$T/$id-$s-first.out")
    else
      first[$s]=-
      chk[$s]="BAD: $(tail -1 "$T/$id-$s-first.out")"
      FAIL=1
    fi
  done
  for s in dovecot nfsdrop; do
    log "$id: $s: $REPEAT repeat sessions on $dom"
    if "$LOAD" pop3 session -addr "127.0.0.1:$(port_of $s)" -user "u1@$dom" -expect "$count" -repeat "$REPEAT" >"$T/$id-$s-repeat.out" 2>&1; then
      rep[$s]=$(grep '^summary' "$T/$id-$s-repeat.out" | kv median)
    else
      rep[$s]=-
      chk[$s]="BAD: $(tail -1 "$T/$id-$s-repeat.out")"
      FAIL=1
    fi
  done
  local c="UIDL count $count, distinct: nfsdrop ${chk[nfsdrop]}, dovecot ${chk[dovecot]}"
  [ "${chk[nfsdrop]}${chk[dovecot]}" = okok ] && c="ok (STAT = UIDL = $count, UIDLs distinct)"
  local k=$count
  [ $((count % 1000)) = 0 ] && k=$((count / 1000))k
  row "${id}a" "$k msgs: login+STAT+UIDL+QUIT, first session (s)" "${first[nfsdrop]}" "${first[dovecot]}" "$tfirst" "$c"
  row "${id}b" "$k msgs: the same, repeat session (s, median of $REPEAT)" "${rep[nfsdrop]}" "${rep[dovecot]}" "$trepeat" "$c"
  for s in nfsdrop dovecot; do
    NOTES+=("$id $s first: $(head -1 "$T/$id-$s-first.out")")
    NOTES+=("$id $s repeat: $(grep '^summary' "$T/$id-$s-repeat.out" || echo '?')")
  done
}
listing 1 big.test "$BIG" "<=0.5" "<=0.1"
listing 2 mid.test "$MID" "" "<=0.03"

# --- scenario 3: RETR everything -------------------------------------------------------
retr_all() {
  local id=$1 pipe=$2 label=$3 s
  declare -A secs mbps chk
  local order=(nfsdrop dovecot)
  [ "$pipe" -gt 1 ] && order=(dovecot nfsdrop)
  for s in "${order[@]}"; do
    log "$id: $s: RETR all $MID messages, pipeline $pipe"
    if "$LOAD" pop3 session -addr "127.0.0.1:$(port_of $s)" -user u1@mid.test -expect "$MID" -retr -pipeline "$pipe" >"$T/$id-$s.out" 2>&1; then
      secs[$s]=$(kv retr_seconds <"$T/$id-$s.out")
      mbps[$s]=$(kv mb_per_s <"$T/$id-$s.out")
      chk[$s]=ok
    else
      secs[$s]=-
      mbps[$s]=-
      chk[$s]="BAD: $(tail -1 "$T/$id-$s.out")"
      FAIL=1
    fi
    NOTES+=("$id $s: $(head -1 "$T/$id-$s.out")")
  done
  local c="nfsdrop ${chk[nfsdrop]}, dovecot ${chk[dovecot]}"
  if [ "${chk[nfsdrop]}${chk[dovecot]}" = okok ]; then
    c="ok (RETR bytes = LIST sum = $(kv retr_bytes <"$T/$id-nfsdrop.out"), each message)"
  fi
  row "$id" "RETR all ${MID} x 4 KB, one session, $label (s)" "${secs[nfsdrop]}" "${secs[dovecot]}" "" "$c"
  row "" "  the same in MB/s (message octets / RETR time)" "${mbps[nfsdrop]}" "${mbps[dovecot]}" ">=dovecot" ""
}
retr_all 3a 1 "one by one"
retr_all 3b "$PIPELINE" "pipelined $PIPELINE"

# --- what the servers did to the mail of scenario 1 -------------------------------------
dbig=$(md "$DROOT" big.test)
nbig=$(md "$NROOT" big.test)
one=$(find "$nbig/new" -type f -print -quit)
one=${one##*/}
uid=${one%%,*}
MAILNOTE=(
  "  after scenarios 1-3 Dovecot's big.test mailbox has $(find "$dbig/new" -type f | wc -l) files in new/, $(find "$dbig/cur" -type f | wc -l) in cur/ (its first session moves new/ to cur/),"
  "  dovecot-uidlist $(stat -c %s "$dbig/dovecot-uidlist" 2>/dev/null || echo '?') bytes, index files $(du -cb "$dbig"/dovecot.index* 2>/dev/null | awk 'END { print $1 }') bytes;"
  "  nfsdrop's has $(find "$nbig/new" -type f | wc -l) in new/, $(find "$nbig/cur" -type f | wc -l) in cur/ (it leaves new/ alone; pop3.move_to_cur = false)"
  "UIDL length: nfsdrop ${#uid} characters (the Maildir base name, e.g. $uid), Dovecot 16 (%08Xu%08Xv)"
)
# The 220,000 files of scenarios 1-3 are removed while scenario 4 (memory
# only) runs, which saves a minute or two at the end.
if [ "${BENCH_KEEP:-0}" != 1 ]; then
  rm -rf "$NROOT/big.test" "$DROOT/big.test" "$NROOT/mid.test" "$DROOT/mid.test" &
  RMPID=$!
fi

# --- scenario 4: idle sessions --------------------------------------------------------------
# mem SERVER: "rss_kib pss_kib processes" of the server's processes.
mem() {
  if [ "$1" = nfsdrop ]; then
    awk '/^VmRSS:/ { r = $2 } END { print r, r, 1 }' "/proc/$NPID/status"
  else
    local pids n
    pids="$DPID $(pgrep -P "$DPID" | tr '\n' ' ' || true)"
    n=$(echo $pids | wc -w)
    {
      { cat $(printf '/proc/%s/status ' $pids) 2>/dev/null || true; } | awk '/^VmRSS:/ { print "rss", $2 }'
      { cat $(printf '/proc/%s/smaps_rollup ' $pids) 2>/dev/null || true; } | awk '/^Pss:/ { print "pss", $2 }'
    } | awk -v n="$n" '$1 == "rss" { r += $2 } $1 == "pss" { p += $2 } END { print r, p, n }'
  fi
}
# idle_run ID SERVER LOGIN(0|1): sets IR_RSS IR_PSS (KiB per session) IR_CHK
idle_run() {
  local id=$1 s=$2 login=$3 before after ready chk=ok locks procs
  # a fresh server: freed memory of earlier scenarios must not be reused
  if [ "$s" = nfsdrop ]; then stop_nfsdrop; start_nfsdrop; else stop_dovecot; start_dovecot; fi
  "$LOAD" pop3 session -addr "127.0.0.1:$(port_of $s)" -user w1@warm.test -expect 10 >"$T/warm2-$s.out" 2>&1 ||
    die "warm-up on $s failed: $(cat "$T/warm2-$s.out")"
  sleep 1
  before=$(mem "$s")
  local args=()
  [ "$login" = 1 ] && args=(-login -user 'i%d@idle.test')
  log "$id: $s: opening $IDLE sessions (login=$login)"
  "$LOAD" pop3 idle -addr "127.0.0.1:$(port_of $s)" -n "$IDLE" "${args[@]}" >"$T/$id-$s.out" 2>&1 &
  IPID=$!
  ready=0
  for _ in $(seq 1 1800); do
    if grep -q '^ready' "$T/$id-$s.out"; then ready=1; break; fi
    kill -0 "$IPID" 2>/dev/null || break
    sleep 0.1
  done
  if [ $ready = 1 ]; then
    log "$id: $s: $(grep '^ready' "$T/$id-$s.out"); measuring"
    sleep 2 # let the server settle
    after=$(mem "$s")
    if [ "$login" = 1 ]; then
      if [ "$s" = nfsdrop ]; then
        locks=$(find "$NROOT/idle.test" -maxdepth 3 -name nfsdrop-pop3.lock | wc -l)
        [ "$locks" = "$IDLE" ] || chk="BAD: $locks lock files for $IDLE sessions"
      else
        procs=$(pgrep -P "$DPID" -x pop3 | wc -l)
        [ "$procs" -ge "$IDLE" ] || chk="BAD: $procs pop3 processes for $IDLE sessions"
      fi
    fi
  else
    after="- - -"
    chk="BAD: $(tail -1 "$T/$id-$s.out")"
  fi
  log "$id: $s: closing the sessions"
  kill -TERM "$IPID" 2>/dev/null || true
  wait "$IPID" 2>/dev/null || chk="BAD: $(tail -1 "$T/$id-$s.out")"
  IPID=
  [ "$chk" = ok ] || FAIL=1
  read -r b_rss b_pss b_n <<<"$before"
  read -r a_rss a_pss a_n <<<"$after"
  if [ "$a_rss" = - ]; then
    IR_RSS=- IR_PSS=-
  else
    IR_RSS=$(awk -v a="$a_rss" -v b="$b_rss" -v n="$IDLE" 'BEGIN { printf "%.1f", (a - b) / n }')
    IR_PSS=$(awk -v a="$a_pss" -v b="$b_pss" -v n="$IDLE" 'BEGIN { printf "%.1f", (a - b) / n }')
  fi
  IR_CHK=$chk
  NOTES+=("$id $s: $(grep -h '^ready\|^closed' "$T/$id-$s.out" | tr '\n' ' ')| before: RSS ${b_rss} KiB PSS ${b_pss} KiB in $b_n processes; with the sessions: RSS ${a_rss} KiB PSS ${a_pss} KiB in $a_n processes")
}
if [ "$IDLE" -gt 0 ]; then
  for variant in a b; do
    login=0
    label="$IDLE idle sessions, connected, no login: KiB RSS/session"
    if [ $variant = b ]; then
      login=1
      label="$IDLE idle sessions, logged in ($IDLE mailboxes): ditto"
    fi
    declare -A rss pss chk4
    for s in nfsdrop dovecot; do
      idle_run "4$variant" "$s" "$login"
      rss[$s]=$IR_RSS
      pss[$s]=$IR_PSS
      chk4[$s]=$IR_CHK
    done
    c="nfsdrop ${chk4[nfsdrop]}, dovecot ${chk4[dovecot]}"
    if [ "${chk4[nfsdrop]}${chk4[dovecot]}" = okok ]; then
      c="ok (all $IDLE open)"
      [ $login = 0 ] || c="ok (all $IDLE logged in: $IDLE nfsdrop locks, $IDLE Dovecot pop3 processes)"
    fi
    row "4$variant" "$label" "${rss[nfsdrop]}" "${rss[dovecot]}" "<=64" "$c"
    row "" "  the same, PSS (Dovecot: shared pages split)" "${pss[nfsdrop]}" "${pss[dovecot]}" "" ""
    unset rss pss chk4
  done
fi

# --- report ------------------------------------------------------------------------------------
if [ -n "$RMPID" ]; then
  wait "$RMPID" || true
  RMPID=
fi
bench_count_errors
nwarn_d=$(grep -iE 'warning' "$T/dovecot/dovecot.log" | grep -vc 'Killed with signal 15' || true)
echo
echo "nfsdrop $VERSION vs $(dovecot --version | awk '{print "Dovecot", $1}') POP3, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "load average (1/5/15 min) at start of runs: $LOAD_START, at end: $(cut -d' ' -f1-3 /proc/loadavg) (other load on the machine skews the times)"
echo "machine: $(bench_machine)"
echo "temp dir: $(bench_tempdir)"
echo "client: bench/load pop3, raw POP3 over TCP to 127.0.0.1, USER/PASS; one connection per session; replies awaited unless pipelined"
echo "mail: identical copies per server written into new/ with names <sec>.M<usec>P<pid>Q<n>R<rand>.bench,S=<size>,W=<crlf size>;"
echo "  the first sessions started >2 s after the prefill (nfsdrop caches no directory younger than 2 s), servers started after the prefill,"
echo "  one warm-up session each on another mailbox; kernel caches not dropped"
echo "Dovecot: defaults for pop3_uidl_format (%08Xu%08Xv: its UIDLs need dovecot-uidlist + index, built at the first login),"
echo "  pop3_lock_session (no: Dovecot takes no per-session mailbox lock, nfsdrop takes a link() dotlock), mail_fsync;"
echo "  pop3-login service_count=0 client_limit=$LIMIT process_min_avail=2, pop3 process_limit=$LIMIT (one pop3 process per logged-in session)"
printf '%s\n' "${MAILNOTE[@]}"
echo "ratio = nfsdrop / Dovecot (times and memory: below 1 means nfsdrop uses less; MB/s: above 1 means nfsdrop is faster); target applies to nfsdrop"
echo
printf '%-3s %-56s %9s %9s %6s  %-12s %-6s %s\n' id measurement nfsdrop dovecot ratio target result check
printf '%s\n' "${RESULTS[@]}"
echo
echo "details (load pop3 output):"
for l in "${NOTES[@]}"; do echo "  $l"; done
echo "error lines in logs: nfsdrop $nerr_n, dovecot $nerr_d (dovecot warnings other than its restarts: $nwarn_d)"
bench_show_errors
if [ "$FAIL" != 0 ]; then
  echo "FAIL: a check failed (see 'check')" >&2
  exit 1
fi
