#!/usr/bin/env bash
# make bench: end-to-end relay benchmark on loopback.
#   bin/sluice-bench smtp (K sessions, N messages) -> sluice on 127.0.0.1:2605
#   (one Lua stage, fsync before 250) -> sink on 127.0.0.1:2602 (started by sluice-bench)
# Prints accepted msgs/s, end-to-end msgs/s and acceptance latency p50/p99 for
# 2 KB and 50 KB messages over 1 and 20 sessions. Override N_* or SCENARIOS.
set -euo pipefail
cd "$(dirname "$0")/../.."

SCENARIOS=${SCENARIOS:-"2048:20:10000 2048:1:2000 51200:20:3000 51200:1:1000"}
# HTTP: CLIENTS:MESSAGES:BATCH[:RATE] (BATCH 0 = POST /v1/messages, N =
# /v1/messages/batch of N; RATE, requests/s: open-loop, latency from each
# request's scheduled send time; no RATE: closed-loop, the clients saturate the relay)
HTTP_SCENARIOS=${HTTP_SCENARIOS:-"64:20000:0 64:20000:0:5000 16:40000:100"}
# SLUICE: the relay binary to run (an A/B swaps it); SERVE_FLAGS: extra
# flags for `sluice serve`, e.g. "-cpuprofile /tmp/cpu.pb" or "-trace /tmp/t.out".
SLUICE=${SLUICE:-bin/sluice}
SERVE_FLAGS=${SERVE_FLAGS:-}
# RELAY_LUA: the relay's config template ({{SPOOL}}, {{EVENTS}} filled in).
RELAY_LUA=${RELAY_LUA:-examples/bench/relay.lua}
# Another benchmark on this machine would answer on the same ports: its
# relay would take this run's requests (401s for our key) and its sink our
# deliveries. Refuse to start rather than measure someone else's relay.
for port in 2605 8025 2602; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "run.sh: 127.0.0.1:$port is already in use (another benchmark running?); not starting" >&2
    exit 2
  fi
done
WORK=$(mktemp -d /tmp/sluice-bench.XXXXXX)
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$WORK"' EXIT

sed -e "s#{{SPOOL}}#$WORK/spool#" -e "s#{{EVENTS}}#$WORK/events.jsonl#" "$RELAY_LUA" > "$WORK/relay.lua"
"$SLUICE" serve -c "$WORK/relay.lua" -log-level warn $SERVE_FLAGS 2> "$WORK/sluice.log" &
pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/2605) 2>/dev/null && break; sleep 0.1; done

KEY=$("$SLUICE" apikey create --tenant bench --scope send -c "$WORK/relay.lua")
# A running relay rereads the key file at most once a second
# (docs/http-api.md): wait until it knows the new key (an empty message is
# refused with 400 once the key is known, 401 before), or the first
# requests of an HTTP scenario are refused.
command -v curl > /dev/null || sleep 1.5 # no curl: wait out the reread
for _ in $(seq 50); do
  command -v curl > /dev/null || break
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    -X POST http://127.0.0.1:8025/v1/messages -d '{}' || true)
  [ "$code" != 401 ] && [ "$code" != 000 ] && break
  sleep 0.2
done

echo "# sluice make bench — $(date -u +%FT%TZ) — $(nproc) cores, $(uname -m), $(go version | cut -d' ' -f3)"
bin/sluice-bench smtp -target 127.0.0.1:2605 -sink 127.0.0.1:2602 -n 1000 -c 20 -size 2048 > /dev/null  # warm-up
# relay CPU (user+system clock ticks) from /proc, for CPU per message, and
# the time its threads were ready to run but waited for a CPU (the kernel's
# run queue: other processes on the machine), from /proc/PID/task/*/schedstat
ticks() { awk '{print $14+$15}' "/proc/$pid/stat" 2>/dev/null || echo 0; }
rqwait() { cat /proc/$pid/task/*/schedstat 2>/dev/null | awk '{s+=$2} END{printf "%.0f\n", s}'; }
cpu_per_msg() { # start_ticks start_rqwait messages
  awk -v a="$1" -v b="$(ticks)" -v w0="$2" -v w1="$(rqwait)" -v n="$3" -v hz="$(getconf CLK_TCK)" \
    'BEGIN{printf "relay CPU: %.0f us/msg, waited for a CPU %.0f us/msg (load %s)\n", (b-a)/hz*1e6/n, (w1-w0)/1e3/n, "'"$(cut -d' ' -f1 /proc/loadavg)"'"}'
}
for sc in $SCENARIOS; do
  IFS=: read -r size sess n <<< "$sc"
  echo "## ${size} B x ${sess} session(s) x ${n} messages"
  t0=$(ticks) w0=$(rqwait)
  bin/sluice-bench smtp -target 127.0.0.1:2605 -sink 127.0.0.1:2602 -n "$n" -c "$sess" -size "$size" -timeout 300s || echo "(run failed)"
  cpu_per_msg "$t0" "$w0" "$n"
done

for sc in $HTTP_SCENARIOS; do
  IFS=: read -r clients n batch rate <<< "$sc"
  rate=${rate:-0}
  mode="closed-loop"
  [ "$rate" = 0 ] || mode="open-loop at ${rate} requests/s"
  echo "## HTTP 2 KB JSON x ${clients} keep-alive client(s) x ${n} messages, batch=${batch}, ${mode}"
  t0=$(ticks) w0=$(rqwait)
  bin/sluice-bench http -target http://127.0.0.1:8025 -key "$KEY" -sink 127.0.0.1:2602 -n "$n" -c "$clients" -size 2048 -batch "$batch" -rate "$rate" -timeout 300s || echo "(run failed)"
  cpu_per_msg "$t0" "$w0" "$n"
done

# Anything the relay warned about during the runs (a refused message is
# otherwise only a count in the report above).
if grep -q . "$WORK/sluice.log"; then
  echo "## relay warnings and errors during the runs"
  cut -c1-300 "$WORK/sluice.log" | sort | uniq -c | sort -rn | head -20
fi
