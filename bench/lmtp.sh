#!/usr/bin/env bash
# LMTP delivery benchmark: nfsdrop's LMTP server and Dovecot 2.3's LMTP
# server, side by side, in one run, on this machine.
#
#   sudo bash bench/lmtp.sh                   full run (~5-8 minutes on 2 cores)
#   sudo BENCH_SCALE=0.05 bash bench/lmtp.sh  quick smoke run
#
# Environment:
#   BENCH_SCALE  multiplies every message count (default 1)
#   BENCH_DIR    where the temporary directory is made (default /var/tmp); its
#                filesystem is what is measured (fsync cost!), it is printed
#   BENCH_KEEP=1 keep the temporary directory (mail, logs, configs)
#   BENCH_USER   unprivileged user that owns all mail (default benchmail,
#                created with useradd if missing)
#   BENCH_PREFILL_SUBDIR  new or cur: where scenario 4b's 100,000 messages are
#                put for both servers. Default: each server's steady state,
#                new/ for nfsdrop (its POP3 leaves mail in new/ unless
#                pop3.move_to_cur) and cur/ for Dovecot (its IMAP moves mail
#                to cur/)
#   BENCH_ONLY   space-separated scenario ids to run (e.g. "1a 4b"); default all
#   BENCH_STORE=0  skip the store row: right after scenario 1c, the store
#                alone (store/bench_test.go BenchmarkDeliver store/separate/g16:
#                store.Deliver from 16 goroutines, one Maildir each, as many
#                2 KB messages as 1c) in the same temporary directory, for
#                "1c / store" (how much of the store's rate lmtpd keeps)
#   BENCH_REV    build nfsdrop from this git revision (git archive into the
#                temporary directory) instead of the working tree, e.g. HEAD
#                while the working tree is in the middle of an edit
#
# Must run as root: Dovecot delivers as the mail user and refuses uid 0, so
# both servers run as root and write files owned by BENCH_USER (Dovecot by
# switching to it, nfsdrop by chowning to the passwd-file uid/gid).
# Installs dovecot-core, dovecot-lmtpd and postfix (for smtp-source) with
# apt-get when they are missing. Needs Go to build nfsdrop.
#
# Load: bench/load lmtp (Go) does the measured runs: like Postfix's
# `smtp-source -L -d`, each session keeps one connection and waits for each
# reply; unlike smtp-source it can spread recipients over a fixed set of users
# (smtp-source -r N only sends to Nu@, ..., 2u@, u@, and -N numbers every
# recipient anew). Two rows are also measured with smtp-source itself, as a
# cross-check of the driver.
#
# Each run's wall clock is taken around the driver (date +%s.%N); the server's
# CPU time (user+sys, of all its processes) over the same run is shown per
# delivery. After each run the files in the Maildirs' new/ and cur/ are
# counted; a wrong count, a file smaller than the body, or a file left in tmp/
# fails the whole command (exit 1) after the table is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
bench_init lmtp.sh

SCALE=${BENCH_SCALE:-1}
NUSERS=50
PREFILL=100000

bench_require_root "Dovecot will not deliver as uid 0, and both servers must write as ${BENCH_USER:-benchmail}"

# --- packages -------------------------------------------------------------
need=()
[ -x /usr/sbin/dovecot ] || need+=(dovecot-core)
[ -x /usr/lib/dovecot/lmtp ] || need+=(dovecot-lmtpd)
[ -x /usr/sbin/smtp-source ] || need+=(postfix)
bench_install "${need[@]}"
bench_dovecot_version
bench_mail_user
bench_require_users dovecot-core dovecot dovenull

# --- work directory and cleanup -------------------------------------------
bench_workdir nfsdrop-bench
bench_build load
STORE_ROW=${BENCH_STORE:-1}
if [ "$STORE_ROW" = 1 ]; then
  go test -c -o "$T/bin/store.test" ./store/ || die "cannot build the store benchmark (BENCH_STORE=0 skips its row)"
fi

bench_mail_roots
chown "$MUID:$MGID" "$DROOT"

# --- scenarios --------------------------------------------------------------
# id|label|driver|sessions|messages (at scale 1)|body bytes|rcpts/msg|users|domain
# driver: load = bench/load lmtp, ss = smtp-source (user names u, 2u, ... Nu)
SCENARIOS=(
  "1a|2K, 1 session, 50 users|load|1|3000|2048|1|$NUSERS|s1a.test"
  "1b|2K, 4 sessions, 50 users|load|4|6000|2048|1|$NUSERS|s1b.test"
  "1c|2K, 16 sessions, 50 users|load|16|9000|2048|1|$NUSERS|s1c.test"
  "1d|64K, 1 session, 50 users|load|1|1500|65536|1|$NUSERS|s1d.test"
  "1e|64K, 4 sessions, 50 users|load|4|3000|65536|1|$NUSERS|s1e.test"
  "1f|64K, 16 sessions, 50 users|load|16|4500|65536|1|$NUSERS|s1f.test"
  "2|2K, 16 sessions, 1 mailbox|load|16|7500|2048|1|1|s2.test"
  "2x|2K, 16 sess, 1 mbox [smtp-source]|ss|16|6000|2048|1|1|s2x.test"
  "3|2K, 4 sess, 10 rcpts/msg, 50 users|load|4|750|2048|10|$NUSERS|s3.test"
  "3x|2K, 4 sess, 10 rcpts [smtp-source]|ss|4|750|2048|10|10|s3x.test"
  "4a|2K, 4 sess, 1 mbox, empty|load|4|1500|2048|1|1|s4a.test"
  "4b|2K, 4 sess, 1 mbox, 100k msgs|load|4|400|2048|1|1|s4b.test"
)
if [ -n "${BENCH_ONLY:-}" ]; then
  keep=()
  for s in "${SCENARIOS[@]}"; do
    case " $BENCH_ONLY " in *" ${s%%|*} "*) keep+=("$s") ;; esac
  done
  [ ${#keep[@]} -gt 0 ] || die "BENCH_ONLY=$BENCH_ONLY matches no scenario"
  SCENARIOS=("${keep[@]}")
fi
scaled() { awk -v n="$1" -v s="$SCALE" 'BEGIN { m = int(n * s + 0.5); if (m < 1) m = 1; print m }'; }

# passwd-file shared by both servers: every scenario domain gets its users.
{
  for d in warm.test; do
    for i in $(seq 1 16); do echo "u$i@$d:{PLAIN}x:$MUID:$MGID::::"; done
  done
  for s in "${SCENARIOS[@]}"; do
    IFS='|' read -r id label driver sess msgs size rcpts users dom <<<"$s"
    for i in $(seq 1 "$users"); do
      if [ "$driver" = ss ]; then
        name=u; [ "$i" -gt 1 ] && name=${i}u
      else
        name=u$i
      fi
      echo "$name@$dom:{PLAIN}x:$MUID:$MGID::::"
    done
  done
} >"$T/users"
chmod 644 "$T/users"

# --- servers ----------------------------------------------------------------
bench_two_ports

{
  bench_nfsdrop_conf "$NROOT" "$T/users"
  cat <<EOF
[lmtp]
listen = ["tcp:127.0.0.1:$NPORT"]
max_recipients = 100
max_user_concurrency = 0
max_connections = 1000
EOF
} >"$T/nfsdrop.toml"
bench_nfsdrop_check "$T/nfsdrop.toml"

{
  bench_dovecot_conf lmtp.sh nfsdrop-bench lmtp "$DROOT" Deliveries
  cat <<EOF
mail_fsync = optimized
recipient_delimiter = +
lmtp_save_to_detail_mailbox = no
lmtp_user_concurrency_limit = 0
lmtp_rcpt_check_quota = no
EOF
  bench_dovecot_passwd
  cat <<EOF
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = $DPORT
  }
}
EOF
} >"$T/dovecot/dovecot.conf"
bench_dovecot_check

"$NFSDROP" lmtpd -c "$T/nfsdrop.toml" 2>"$T/nfsdrop.log" &
NPID=$!
PIDS+=("$NPID")
dovecot -c "$T/dovecot/dovecot.conf" -F 2>"$T/dovecot/stderr.log" &
DPID=$!
PIDS+=("$DPID")

bench_wait_port "$NPORT" "$NPID" nfsdrop "$T/nfsdrop.log"
bench_wait_port "$DPORT" "$DPID" dovecot "$T/dovecot/dovecot.log"

# cpu_ticks SERVER: user+system clock ticks used so far by the server's
# processes (for Dovecot: the master, its live children, and the children
# it has reaped).
cpu_ticks() {
  local pid
  if [ "$1" = nfsdrop ]; then
    awk '{ print $14 + $15 }' "/proc/$NPID/stat"
  else
    {
      awk '{ print $14 + $15 + $16 + $17 }' "/proc/$DPID/stat"
      for pid in $(pgrep -P "$DPID"); do
        awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || true
      done
    } | awk '{ s += $1 } END { print s }'
  fi
}
TCK=$(getconf CLK_TCK)

port_of() { if [ "$1" = nfsdrop ]; then echo "$NPORT"; else echo "$DPORT"; fi; }
root_of() { if [ "$1" = nfsdrop ]; then echo "$NROOT"; else echo "$DROOT"; fi; }

# drive SERVER DRIVER SESSIONS MESSAGES SIZE RCPTS USERS DOMAIN
drive() {
  local server=$1 driver=$2 sess=$3 msgs=$4 size=$5 rcpts=$6 users=$7 dom=$8
  local port
  port=$(port_of "$server")
  if [ "$driver" = ss ]; then
    /usr/sbin/smtp-source -L -d -s "$sess" -m "$msgs" -l "$size" -r "$rcpts" \
      -f a@bench.test -t "u@$dom" "127.0.0.1:$port" >"$T/driver.out" 2>&1
  else
    "$LOAD" lmtp send -addr "127.0.0.1:$port" -sessions "$sess" -messages "$msgs" -size "$size" \
      -rcpts "$rcpts" -users "$users" -rcpt "u%d@$dom" >"$T/driver.out" 2>&1
  fi
}

# count_mail SERVER DOMAIN BODYSIZE: bench_count_mail on the domain's
# Maildirs of SERVER.
count_mail() { bench_count_mail "$(root_of "$1")/$2" "$3"; }

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# --- warm-up ----------------------------------------------------------------
# Starts Dovecot's auth and 16 lmtp processes (kept for reuse, service_count
# is unlimited) and makes the warm.test mailboxes; not measured.
log "warm-up"
for server in nfsdrop dovecot; do
  drive "$server" load 16 64 2048 1 16 warm.test || die "warm-up on $server failed: $(cat "$T/driver.out")"
done

# --- scenario 4 preparation --------------------------------------------------
# s4a.test/u1 and s4b.test/u1 get one delivery each through the server (so
# the mailbox exists and Dovecot has its dovecot-uidlist and index); then s4b
# gets 100,000 files written directly (bench/load lmtp fill) into new/ for
# nfsdrop and cur/ for Dovecot (see BENCH_PREFILL_SUBDIR). An LMTP
# delivery does not make Dovecot look at the files already there, so
# `doveadm mailbox status` (a mailbox sync, as an IMAP or POP3 login does)
# makes it list them in dovecot-uidlist and its index, as it would for a
# mailbox in use; then one more delivery each, untimed. 4a gets the same
# doveadm call and extra delivery.
PREP_NOTE=()
for s in "${SCENARIOS[@]}"; do
  IFS='|' read -r id _ _ _ _ _ _ _ dom <<<"$s"
  case $id in 4a | 4b) ;; *) continue ;; esac
  for server in nfsdrop dovecot; do
    drive "$server" load 1 1 2048 1 1 "$dom" || die "prep of $dom on $server failed: $(cat "$T/driver.out")"
  done
  if [ "$id" = 4b ]; then
    for server in nfsdrop dovecot; do
      md=$(root_of "$server")/$dom/u1/Maildir
      sub=${BENCH_PREFILL_SUBDIR:-}
      [ -n "$sub" ] || { [ "$server" = nfsdrop ] && sub=new || sub=cur; }
      log "pre-populating $server $md/$sub with $PREFILL messages"
      "$LOAD" lmtp fill -n "$PREFILL" -size 2048 -host prefill "$md/$sub" >/dev/null
      chown -R "$MUID:$MGID" "$md"
    done
    sync
  fi
  t0=$(date +%s.%N)
  doveadm -c "$T/dovecot/dovecot.conf" mailbox status -u "u1@$dom" messages INBOX >"$T/doveadm.out" 2>&1 ||
    die "doveadm mailbox status failed: $(cat "$T/doveadm.out")"
  t1=$(date +%s.%N)
  PREP_NOTE+=("$(printf '%s: doveadm mailbox status (Dovecot sync) took %.2f s: %s' "$id" \
    "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" "$(tr -d '\n' <"$T/doveadm.out")")")
  for server in nfsdrop dovecot; do
    t0=$(date +%s.%N)
    drive "$server" load 1 1 2048 1 1 "$dom" || die "delivery after sync on $server failed: $(cat "$T/driver.out")"
    t1=$(date +%s.%N)
    PREP_NOTE+=("$(printf '%s: %s: next delivery took %.3f s' "$id" "$server" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")")
  done
done

# cpu_busy: "busy total" clock ticks of all CPUs so far (/proc/stat)
cpu_busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }
# driver_cpu: bench/load's own CPU seconds in its summary (0 for smtp-source)
driver_cpu() { { grep -o 'driver_cpu_s=[0-9.]*' "$T/driver.out" || echo x=0; } | head -1 | cut -d= -f2; }

# store_row MESSAGES: the store alone at 16 goroutines (BENCH_STORE), a row
# with 1c's nfsdrop rate over the store's as its ratio.
store_row() {
  local msgs=$1 out line srate scpu b0 w0 b1 w1 other
  log "st store.Deliver alone, 2K, 16 goroutines ($msgs messages)"
  sync
  read -r b0 w0 <<<"$(cpu_busy)"
  out=$(cd "$T" && NFSDROP_BENCH_DIR=$T NFSDROP_BENCH_KEEP=1 "$T/bin/store.test" -test.run '^$' \
    -test.bench '^BenchmarkDeliver$/^store$/^separate$/^g16$' -test.benchtime "${msgs}x" 2>&1) || {
    log "store row failed: $(echo "$out" | tail -3)"
    return 0
  }
  read -r b1 w1 <<<"$(cpu_busy)"
  line=$(echo "$out" | grep 'cpu-us/op' | tail -1)
  scpu=$(echo "$line" | awk '{ for (i = 1; i < NF; i++) if ($(i + 1) == "cpu-us/op") printf "%.0f", $i }')
  srate=$(echo "$line" | awk '{ for (i = 1; i < NF; i++) if ($(i + 1) == "deliveries/s") printf "%.0f", $i }')
  other=$(awk -v b=$((b1 - b0)) -v w=$((w1 - w0)) -v c="$scpu" -v n="$msgs" -v t="$TCK" \
    'BEGIN { o = (b - c * n / 1e6 * t) / w * 100; if (o < 0) o = 0; printf "%.0f", o }')
  RESULTS+=("$(printf '%-3s %-36s %7d %9s %9s %6s %7s %7s %5s %5s  %s' st "2K, store alone, 16 goroutines" "$msgs" \
    "$srate" - "$(awk -v a="$RATE_1C" -v b="$srate" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')" \
    "$scpu" - "$other" - "ratio = 1c nfsdrop/s / store/s")")
}

# --- measured runs ------------------------------------------------------------
RESULTS=()
FAIL=0
n=0
for s in "${SCENARIOS[@]}"; do
  IFS='|' read -r id label driver sess msgs size rcpts users dom <<<"$s"
  msgs=$(scaled "$msgs")
  base=0
  case $id in 4a) base=2 ;; 4b) base=$((PREFILL + 2)) ;; esac
  expect=$((base + msgs * rcpts))
  order=(nfsdrop dovecot)
  [ $((n % 2)) = 1 ] && order=(dovecot nfsdrop) # alternate who goes first
  n=$((n + 1))
  declare -A rate cpu check other
  for server in "${order[@]}"; do
    log "$id $label: $server ($msgs messages x $rcpts rcpts)"
    sync
    c0=$(cpu_ticks "$server")
    read -r b0 w0 <<<"$(cpu_busy)"
    t0=$(date +%s.%N)
    ok=1
    drive "$server" "$driver" "$sess" "$msgs" "$size" "$rcpts" "$users" "$dom" || ok=0
    t1=$(date +%s.%N)
    read -r b1 w1 <<<"$(cpu_busy)"
    c1=$(cpu_ticks "$server")
    # other%: CPU busy outside the server and bench/load (kernel flush
    # threads, other users' load; smtp-source counts here), % of all CPUs
    other[$server]=$(awk -v b=$((b1 - b0)) -v w=$((w1 - w0)) -v c=$((c1 - c0)) -v d="$(driver_cpu)" -v t="$TCK" \
      'BEGIN { o = (b - c - d * t) / w * 100; if (o < 0) o = 0; printf "%.0f", o }')
    if [ $ok = 0 ]; then
      log "driver failed on $server: $(tail -3 "$T/driver.out")"
    fi
    read -r files small tmp <<<"$(count_mail "$server" "$dom" "$size")"
    if [ $ok = 1 ] && [ "$files" = "$expect" ] && [ "$small" = 0 ] && [ "$tmp" = 0 ]; then
      check[$server]=ok
    else
      check[$server]="BAD($files/$expect,small=$small,tmp=$tmp)"
      FAIL=1
    fi
    rate[$server]=$(awk -v n=$((msgs * rcpts)) -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
    cpu[$server]=$(awk -v n=$((msgs * rcpts)) -v c=$((c1 - c0)) -v t="$TCK" 'BEGIN { printf "%.0f", c / t / n * 1e6 }')
  done
  ratio=$(awk -v a="${rate[nfsdrop]}" -v b="${rate[dovecot]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
  if [ "${check[nfsdrop]}" = ok ] && [ "${check[dovecot]}" = ok ]; then
    chk="ok $expect+$expect"
  else
    chk="nfsdrop=${check[nfsdrop]} dovecot=${check[dovecot]}"
  fi
  RESULTS+=("$(printf '%-3s %-36s %7d %9s %9s %6s %7s %7s %5s %5s  %s' "$id" "$label" $((msgs * rcpts)) \
    "${rate[nfsdrop]}" "${rate[dovecot]}" "$ratio" "${cpu[nfsdrop]}" "${cpu[dovecot]}" "${other[nfsdrop]}" "${other[dovecot]}" "$chk")")
  if [ "$id" = 1c ] && [ "$STORE_ROW" = 1 ]; then
    RATE_1C=${rate[nfsdrop]}
    store_row "$msgs"
  fi
  unset rate cpu check other
done

# --- report -------------------------------------------------------------------
bench_count_errors
d4=$(root_of dovecot)/s4b.test/u1/Maildir
echo
echo "nfsdrop $VERSION vs $(dovecot --version | awk '{print "Dovecot", $1}'), $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "load average (1/5/15 min) at start of runs: $LOAD_START, at end: $(cut -d' ' -f1-3 /proc/loadavg) (other load on the machine skews the rates)"
echo "machine: $(bench_machine)"
echo "temp dir: $(bench_tempdir)"
dev=$(df "$T" | awk 'NR == 2 { print $1 }')
if [ "$(df -T "$T" | awk 'NR == 2 { print $2 }')" = ext4 ] && [ -d /proc/fs/jbd2 ]; then
  # a journalled ext4 has a jbd2 entry named after its device
  if ls /proc/fs/jbd2 | grep -q "^$(basename "$dev")-"; then
    echo "  ext4 with a journal (jbd2)"
  else
    echo "  ext4 WITHOUT a journal (no /proc/fs/jbd2 entry for $dev): fsync writes the data and inode only"
  fi
fi
echo "both servers run as root and write as $BENCH_USER ($MUID:$MGID); Dovecot mail_fsync=optimized; nfsdrop fsyncs the file and new/"
echo "driver: bench/load lmtp (one connection per session, no pipelining) unless [smtp-source -L -d]; scale $SCALE"
if [ ${#PREP_NOTE[@]} -gt 0 ]; then
  echo "scenario 4: 4b's mailbox got $PREFILL messages written directly into ${BENCH_PREFILL_SUBDIR:-new/ (nfsdrop) and cur/ (Dovecot)}; untimed preparation:"
  for l in "${PREP_NOTE[@]}"; do echo "  $l"; done
fi
if [ -d "$d4" ]; then
  n4=$(root_of nfsdrop)/s4b.test/u1/Maildir
  echo "  after the run nfsdrop's 4b mailbox has $(find "$n4/new" -type f | wc -l) files in new/, $(find "$n4/cur" -type f | wc -l) in cur/"
  echo "  after the run Dovecot's 4b mailbox has $(find "$d4/new" -type f | wc -l) files in new/, $(find "$d4/cur" -type f | wc -l) in cur/, dovecot-uidlist $(stat -c %s "$d4/dovecot-uidlist" 2>/dev/null || echo '?') bytes"
fi
echo "rate = deliveries (messages x recipients) / wall-clock seconds of the driver; CPU = server user+sys microseconds per delivery"
echo
echo "n-oth%, d-oth% = CPU busy outside the server and bench/load during nfsdrop's and Dovecot's run, in % of all CPUs (other users' load skews the rates; CPU per delivery less so)"
printf '%-3s %-36s %7s %9s %9s %6s %7s %7s %5s %5s  %s\n' id scenario dlv nfsdrop/s dovecot/s ratio nfs-cpu dov-cpu n-oth d-oth "files checked"
printf '%s\n' "${RESULTS[@]}"
echo
echo "error lines in logs: nfsdrop $nerr_n, dovecot $nerr_d"
bench_show_errors
if [ "$FAIL" != 0 ]; then
  echo "FAIL: a delivered file count is wrong (see 'files checked')" >&2
  exit 1
fi
