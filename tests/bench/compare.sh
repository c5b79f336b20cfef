#!/usr/bin/env bash
# Benchmark smtplab beside aiosmtpd under the same load, in one run, and print one report.
#
#   tests/bench/compare.sh            (from the repository root; takes a few minutes)
#
# Environment (all optional): SESSIONS (20), MESSAGES (20000), SIZE (2048), IDLE (1000),
# CONNECTIONS (5000), SEQUENTIAL (2000), VENV (/tmp/smtplab-bench-venv).
#
# What it does:
#   1. builds smtplab in release mode and makes a venv with aiosmtpd (pip install aiosmtpd);
#   2. starts smtplab in a fresh temporary directory (so ./mail is empty) and aiosmtpd with
#      tests/bench/aiosmtpd_mbox.py (append to one mbox, flock, fsync per message);
#   3. runs `smtplab bench` against each in turn: SESSIONS parallel sessions sending MESSAGES
#      messages of SIZE octets to one mailbox, then counts the messages in each mbox
#      (From_ lines, and distinct X-Bench-Id headers: duplicates or losses show up here);
#   4. measures connections per second (--connect-only) against each;
#   5. opens IDLE connections to each (after the 220), and reads the server's VmRSS from
#      /proc/PID/status before and after: KiB per idle connection;
#   6. load L3: one session sending SEQUENTIAL messages one after the other, to each server:
#      the time per message when no batch can form, so every delivery pays its own sync;
#   7. with strace installed, counts the syncs (fsync, fdatasync) of a fresh smtplab while one
#      session sends 200 messages: syncs per message on the hot path;
#   8. prints the ratios, and stops both servers.
# Benchmarks report; nothing here passes or fails on a timing.
set -euo pipefail

SESSIONS=${SESSIONS:-20}
MESSAGES=${MESSAGES:-20000}
SIZE=${SIZE:-2048}
IDLE=${IDLE:-1000}
CONNECTIONS=${CONNECTIONS:-5000}
SEQUENTIAL=${SEQUENTIAL:-2000}
VENV=${VENV:-/tmp/smtplab-bench-venv}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN="$ROOT/target/release/smtplab"

for tool in python3 cargo; do
    command -v "$tool" >/dev/null || { echo "SKIP: $tool not installed"; exit 0; }
done
if [ "$(ulimit -n)" -lt $((IDLE + 100)) ]; then
    ulimit -n $((IDLE + 100)) || { echo "ulimit -n is too low for $IDLE connections"; exit 1; }
fi

WORK=$(mktemp -d /tmp/smtplab-bench.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "== building smtplab (release) and the aiosmtpd venv"
(cd "$ROOT" && cargo build --release --quiet)
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c 'import aiosmtpd' 2>/dev/null || "$VENV/bin/pip" install --quiet aiosmtpd

# Two free loopback ports, chosen by the kernel.
read -r SMTPLAB_PORT AIOSMTPD_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')

# Wait (with a deadline) until something accepts on port $1.
wait_for_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1"; exit 1
}

mkdir -p "$WORK/smtplab" "$WORK/aiosmtpd"
(cd "$WORK/smtplab" && exec "$BIN" --listen "127.0.0.1:$SMTPLAB_PORT" \
    --max-connections $((IDLE + SESSIONS + 100)) --max-connections-per-ip $((IDLE + SESSIONS + 100)) \
    --mailbox-size-limit 0 \
    >"$WORK/smtplab.log" 2>&1) &
SMTPLAB_PID=$!
PIDS+=("$SMTPLAB_PID")
"$VENV/bin/python" "$ROOT/tests/bench/aiosmtpd_mbox.py" --listen "127.0.0.1:$AIOSMTPD_PORT" \
    --mbox "$WORK/aiosmtpd/alice" >"$WORK/aiosmtpd.log" 2>&1 &
AIOSMTPD_PID=$!
PIDS+=("$AIOSMTPD_PID")
wait_for_port "$SMTPLAB_PORT"
wait_for_port "$AIOSMTPD_PORT"

# Messages per second from a bench report.
rate() { awk '/^  rate/ { print $2 }' "$1"; }
# Messages in an mbox: From_ separators, and distinct X-Bench-Id headers.
count() {
    local from ids
    [ -f "$1" ] || { echo "no mbox at $1"; return; }
    from=$(grep -c '^From ' "$1" || true)
    ids=$( (grep '^X-Bench-Id: ' "$1" || true) | sort -u | wc -l)
    echo "$from messages ($ids distinct X-Bench-Id)"
}

declare -A MBOX=([smtplab]="$WORK/smtplab/mail/alice" [aiosmtpd]="$WORK/aiosmtpd/alice")
LOAD=(--sessions "$SESSIONS" --messages "$MESSAGES" --size "$SIZE" --to alice@localhost)
echo
echo "== machine: $(nproc) cores, $(uname -sr), mail on $(stat -f -c %T "$WORK") ($WORK)"
echo "== load: $SESSIONS sessions, $MESSAGES messages of $SIZE octets to one mailbox"
for name in smtplab aiosmtpd; do
    port_var="${name^^}_PORT"
    echo
    echo "-- $name: messages"
    "$BIN" bench --server "127.0.0.1:${!port_var}" "${LOAD[@]}" | tee "$WORK/$name.send"
    echo "   mbox: $(count "${MBOX[$name]}")"
done
for name in smtplab aiosmtpd; do
    port_var="${name^^}_PORT"
    echo
    echo "-- $name: connections"
    "$BIN" bench --server "127.0.0.1:${!port_var}" --connect-only --sessions "$SESSIONS" \
        --messages "$CONNECTIONS" | tee "$WORK/$name.connect"
done
for name in smtplab aiosmtpd; do
    port_var="${name^^}_PORT"
    pid_var="${name^^}_PID"
    echo
    echo "-- $name: idle connections"
    "$BIN" bench --server "127.0.0.1:${!port_var}" --idle "$IDLE" --pid "${!pid_var}"
done

for name in smtplab aiosmtpd; do
    port_var="${name^^}_PORT"
    echo
    echo "-- $name: L3, one session, $SEQUENTIAL messages in sequence"
    "$BIN" bench --server "127.0.0.1:${!port_var}" --sessions 1 --messages "$SEQUENTIAL" \
        --size "$SIZE" --to alice@localhost | tee "$WORK/$name.sequential"
done

# Syncs per message: a fresh smtplab under strace, one session, 200 messages to an mbox that
# already exists (the first message creates it, which costs a directory sync once).
SYNCS="(strace not installed)"
if command -v strace >/dev/null; then
    read -r TRACE_PORT < <(python3 -c '
import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    mkdir -p "$WORK/traced"
    (cd "$WORK/traced" && exec "$BIN" --listen "127.0.0.1:$TRACE_PORT" >"$WORK/traced.log" 2>&1) &
    TRACED_PID=$!
    PIDS+=("$TRACED_PID")
    wait_for_port "$TRACE_PORT"
    # Attach to the running server (every thread, and each new one): killing the server later
    # ends strace too.
    strace -f -qq -p "$TRACED_PID" -e trace=fsync,fdatasync -o "$WORK/syncs.txt" &
    PIDS+=("$!")
    for _ in $(seq 100); do
        grep -q '^TracerPid:[[:space:]]*[1-9]' "/proc/$TRACED_PID/status" && break
        sleep 0.05
    done
    "$BIN" bench --server "127.0.0.1:$TRACE_PORT" --sessions 1 --messages 1 --size "$SIZE" \
        --to alice@localhost >/dev/null
    before=$(grep -cE '(fsync|fdatasync)\(' "$WORK/syncs.txt" || true)
    "$BIN" bench --server "127.0.0.1:$TRACE_PORT" --sessions 1 --messages 200 --size "$SIZE" \
        --to alice@localhost >/dev/null
    after=$(grep -cE '(fsync|fdatasync)\(' "$WORK/syncs.txt" || true)
    SYNCS=$(awk -v n=$((after - before)) 'BEGIN { printf "%.2f per message (%d for 200)", n / 200, n }')
    kill "$TRACED_PID"
fi

echo
echo "== summary"
printf '%-10s %12s %14s\n' server "messages/s" "connections/s"
for name in smtplab aiosmtpd; do
    printf '%-10s %12s %14s\n' "$name" "$(rate "$WORK/$name.send")" "$(rate "$WORK/$name.connect")"
done
awk -v a="$(rate "$WORK/smtplab.send")" -v b="$(rate "$WORK/aiosmtpd.send")" \
    'BEGIN { printf "ratio      smtplab / aiosmtpd = %.2f (messages/s)\n", a / b }'
awk -v a="$(rate "$WORK/smtplab.sequential")" -v b="$(rate "$WORK/aiosmtpd.sequential")" \
    'BEGIN { printf "L3         %.3f ms against %.3f ms per message: %.2fx aiosmtpd'"'"'s time\n", 1000 / a, 1000 / b, b / a }'
echo "syncs      smtplab, one session: $SYNCS"
