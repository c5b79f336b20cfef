#!/usr/bin/env bash
# The relay lab of lessons 11 and 12: two smtplab hosts on one machine and a lab nameserver, all on
# 127.0.0.0/8 (Linux routes all of it to the loopback interface), on ports the system picks.
#   1. alice@one.test writes to bob@two.test: MUA -> smtplab(one) -> MX lookup -> smtplab(two).
#   2. The failure half: bob@down.test (an MX where nothing listens) and carol@nosuch.test (no
#      such domain). carol bounces at once; bob waits in the queue, then bounces too.
# Needs only the smtplab binary: $SMTPLAB, or smtplab on PATH. Runs from any directory; its files
# go in a new directory under $TMPDIR (or /tmp), printed at the end.
set -euo pipefail

BIN=${SMTPLAB:-$(command -v smtplab || true)}
if [ -z "$BIN" ] || [ ! -x "$BIN" ]; then
  echo "relay-lab: no smtplab binary: set SMTPLAB=/path/to/smtplab or put smtplab on PATH" >&2
  exit 1
fi
LAB=$(mktemp -d "${TMPDIR:-/tmp}/smtplab-lab.XXXXXX")
pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop_all EXIT

step() { printf '\n== %s\n' "$*"; }

# queue_until PATTERN WHY: list server one's queue until a line matches PATTERN (up to 10 s).
queue_until() {
  for _ in $(seq 100); do
    "$BIN" queue --spool "$LAB/one/spool" >"$LAB/queue.txt" 2>&1 || true
    grep -qE -- "$1" "$LAB/queue.txt" && return 0
    sleep 0.1
  done
  fail "$2" "$LAB/one.log"
}

# fail WHY [LOG]: say what went wrong, with the last lines of the log that shows it.
fail() {
  echo "relay-lab: FAILED: $1" >&2
  if [ -n "${2:-}" ] && [ -s "$2" ]; then
    echo "relay-lab: the last lines of $2:" >&2
    tail -n 5 "$2" | sed 's/^/    /' >&2
  fi
  echo "relay-lab: the lab files are in $LAB" >&2
  exit 1
}

# wait_for FILE TEXT WHY LOG [PID]: wait up to 10 s for TEXT to appear in FILE (and give up at
# once if process PID has ended).
wait_for() {
  for _ in $(seq 100); do
    grep -qF -- "$2" "$1" 2>/dev/null && return 0
    if [ -n "${5:-}" ] && ! kill -0 "$5" 2>/dev/null; then break; fi
    sleep 0.1
  done
  fail "$3" "$4"
}

# start NAME ARGS...: the binary in the background; stdout in NAME.out, the log in NAME.log.
start() {
  local name=$1
  shift
  "$BIN" "$@" >"$LAB/$name.out" 2>"$LAB/$name.log" &
  pids+=($!)
}

# started NAME: wait for a server's banner and print the port of its SMTP listener.
started() {
  wait_for "$LAB/$1.out" "Try: telnet" "server $1 did not start" "$LAB/$1.log" "${pids[-1]}"
  awk '$1 == "SMTP" { n = split($2, part, ":"); print part[n]; exit }' "$LAB/$1.out"
}

# The mail client: one SMTP session on fd 3, waiting for every reply and checking its code.
reply() {
  local line
  while IFS= read -r -t 10 line <&3; do
    line=${line%$'\r'}
    echo "S: $line"
    [ "${line:3:1}" = "-" ] && continue
    [ "${line:0:3}" = "$1" ] && return 0
    fail "server one answered '$line' where $1 was expected" "$LAB/one.log"
  done
  fail "server one sent no reply (expected $1)" "$LAB/one.log"
}
say() {
  echo "C: $1"
  printf '%s\r\n' "$1" >&3
}
# send_mail SUBJECT RECIPIENT...: alice@one.test sends one message through server one.
send_mail() {
  local subject=$1 rcpt
  shift
  exec 3<>"/dev/tcp/127.0.0.2/$ONE_PORT" || fail "cannot connect to 127.0.0.2:$ONE_PORT" "$LAB/one.log"
  reply 220
  say "EHLO mua.one.test"; reply 250
  say "MAIL FROM:<alice@one.test>"; reply 250
  for rcpt in "$@"; do say "RCPT TO:<$rcpt>"; reply 250; done
  say "DATA"; reply 354
  printf 'From: alice@one.test\r\nSubject: %s\r\n\r\nHello!\r\n.\r\n' "$subject" >&3
  echo "C: <the message: From, Subject, a blank line, Hello!, and the lone dot>"
  reply 250
  say "QUIT"; reply 221
  exec 3>&-
}

step "1. The nameserver: the zone of the lab, served on a free port of 127.0.0.1"
cat >"$LAB/lab.zone" <<'ZONE'
; The lab's made-up domains (RFC 1035 section 5 master file).
$ORIGIN test.
$TTL 60
one      IN MX 10 mx.one
mx.one   IN A     127.0.0.2
two      IN MX 10 mx.two
mx.two   IN A     127.0.0.3
down     IN MX 10 mx.down
mx.down  IN A     127.0.0.6   ; nothing listens there
nullmx   IN MX 0 .            ; RFC 7505: this domain takes no mail
ZONE
start dns dns --zone "$LAB/lab.zone" --listen 127.0.0.1:0
wait_for "$LAB/dns.out" "recursion refused" "the nameserver did not start" "$LAB/dns.log" "${pids[-1]}"
DNS=$(awk '{ for (i = 1; i < NF; i++) if ($i == "on") { print $(i + 1); exit } }' "$LAB/dns.out")
cat "$LAB/dns.out"
"$BIN" mx two.test --dns "$DNS" || fail "the MX lookup of two.test failed" "$LAB/dns.out"

step "2. Two mail hosts: two.test on 127.0.0.3, and one.test on 127.0.0.2 relaying for 127/8"
start two --listen 127.0.0.3:0 --hostname mx.two.test --domain two.test \
  --mail-dir "$LAB/two/mail" --spool "$LAB/two/spool" --dns "$DNS"
TWO_PORT=$(started two)
# Every next hop listens on two's port, as every real MX listens on 25.
RUST_LOG=smtplab=debug start one --listen 127.0.0.2:0 --hostname mx.one.test --domain one.test \
  --mail-dir "$LAB/one/mail" --spool "$LAB/one/spool" --dns "$DNS" --mx-port "$TWO_PORT" \
  --relay-from 127.0.0.0/8 --retry 1s --queue-lifetime 3s
ONE_PORT=$(started one)
echo "one.test: 127.0.0.2:$ONE_PORT    two.test: 127.0.0.3:$TWO_PORT    DNS: $DNS"

step "3. alice's mail client sends to bob@two.test through server one"
send_mail "relay lab" bob@two.test

step "4. Follow the message: the relay's log on one, the nameserver's console, bob's mbox on two"
wait_for "$LAB/two/mail/bob" "Subject: relay lab" "the message never reached bob@two.test" "$LAB/one.log"
queue_until "The queue is empty" "server one kept the message in its queue"
grep -F "[Q" "$LAB/one.log" | sed 's/^\[[^]]*\] //'
grep -F "two.test" "$LAB/dns.out"
cat "$LAB/two/mail/bob"
cat "$LAB/queue.txt"

step "5. When it fails: a dead MX (bob@down.test) and no such domain (carol@nosuch.test)"
send_mail "failure lab" bob@down.test carol@nosuch.test
queue_until "<bob@down.test>.*451" "no failed attempt to mx.down.test in the queue"
cat "$LAB/queue.txt"
wait_for "$LAB/one/mail/alice" "Final-Recipient: rfc822; carol@nosuch.test" \
  "alice got no bounce for carol@nosuch.test" "$LAB/one.log"

step "6. The queue lifetime (3s here, days on the Internet) runs out: bob@down.test bounces too"
wait_for "$LAB/one/mail/alice" "Final-Recipient: rfc822; bob@down.test" \
  "alice got no bounce for bob@down.test" "$LAB/one.log"
grep -E "^(From |Subject:|Final-Recipient:|Action:|Status:|Diagnostic-Code:)" "$LAB/one/mail/alice"
"$BIN" queue --spool "$LAB/one/spool"

printf '\nrelay-lab: every step passed; the lab files are in %s\n' "$LAB"
