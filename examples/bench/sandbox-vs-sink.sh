#!/usr/bin/env bash
# Capture vs delivery to a local sink, end to end (issue 23).
#   ./examples/bench/sandbox-vs-sink.sh MODE [N] [SESSIONS] [SIZE]
# MODE "sink": sluice relays every message to sluice-bench's counting sink;
# MODE "capture": sluice captures every message into a sandbox inbox
# (sluice.route.capture) and the run ends when the inbox holds all N.
# Same relay config otherwise (one Lua stage, fsync before each 250).
# SLUICE=path runs another sluice binary (A/B of two builds); SERVE_FLAGS
# adds flags to `sluice serve` (e.g. "-cpuprofile /tmp/cpu.pb"); STRACE=FILE
# counts the relay's fsyncs (strace -c) during the run into FILE.
# Prints the end-to-end wall time, the relay process's CPU seconds
# (user+sys, from /proc) and sluice-bench's (the client, and in "sink" mode
# the sink too: the receiving end a capture does in the relay), so CPU per
# message can be compared in one run, and the relay's disk writes.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODE=${1:?sink or capture}; N=${2:-5000}; C=${3:-20}; SIZE=${4:-2048}
WORK=$(mktemp -d /tmp/sluice-sbbench.XXXXXX)
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; [ -z "${KEEP_LOG:-}" ] || cp "$WORK/sluice.log" "$KEEP_LOG"; rm -rf "$WORK"' EXIT
if [ "$MODE" = capture ]; then ROUTE='sluice.route.capture { tenant = "bench" }'; else ROUTE='sluice.route.relay { host = "127.0.0.1", port = 2612, tls = "none" }'; fi
cat > "$WORK/relay.lua" <<LUA
local sluice = require("sluice")
sluice.node { name = "bench-sb", hostname = "relay.bench.test" }
sluice.spool { path = "$WORK/spool" }
sluice.events { file = "$WORK/events.jsonl" }
sluice.listen_smtp { addr = "127.0.0.1:2615", relay_networks = { "127.0.0.1/32" }, max_connections = 2000 }
sluice.listen_http { addr = "127.0.0.1:8035" }
sluice.delivery { max_per_destination = 20, max_messages_per_conn = 1000 }
sluice.sandbox { retention = { messages = 100000 } }
sluice.stage("stamp", { on_message = function(msg) msg:add_header("X-Bench", "1") end })
sluice.stage("routing", { on_route = function(msg, rcpt) return $ROUTE end })
LUA
"${SLUICE:-bin/sluice}" serve -c "$WORK/relay.lua" -log-level warn ${SERVE_FLAGS:-} 2> "$WORK/sluice.log" &
pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/2615) 2>/dev/null && break; sleep 0.1; done
KEY=$("${SLUICE:-bin/sluice}" apikey create --tenant bench --scope send -c "$WORK/relay.lua")
cpu() { awk '{print ($14+$15)/100}' /proc/$pid/stat; }
wbytes() { awk '/^write_bytes/ {print $2}' /proc/$pid/io; }
start_cpu=$(cpu); start_wb=$(wbytes); start=$(date +%s.%N)
if [ -n "${STRACE:-}" ]; then strace -f -c -e trace=fsync,fdatasync,sync_file_range -o "$STRACE" -p $pid 2>/dev/null & spid=$!; fi
if [ "$MODE" = capture ]; then
  /usr/bin/time -f "%U %S" -o "$WORK/bench.cpu" bin/sluice-bench smtp -target 127.0.0.1:2615 -sink "" -n "$N" -c "$C" -size "$SIZE" -timeout 300s > "$WORK/report"
  until [ "$(curl -s -H "Authorization: Bearer $KEY" 'http://127.0.0.1:8035/v1/sandbox/messages?limit=1' | sed -n 's/.*"total":\([0-9]*\).*/\1/p')" = "$N" ]; do sleep 0.05; done
else
  /usr/bin/time -f "%U %S" -o "$WORK/bench.cpu" bin/sluice-bench smtp -target 127.0.0.1:2615 -sink 127.0.0.1:2612 -n "$N" -c "$C" -size "$SIZE" -timeout 300s > "$WORK/report"
fi
end=$(date +%s.%N); end_cpu=$(cpu); end_wb=$(wbytes)
if [ -n "${STRACE:-}" ]; then kill -INT $spid; wait $spid 2>/dev/null || true; fi
awk -v m="$MODE" -v n="$N" -v w="$(echo "$end - $start" | bc)" -v c="$(echo "$end_cpu - $start_cpu" | bc)" \
  -v wb="$((end_wb - start_wb))" \
  -v b="$(awk '{print $1+$2}' "$WORK/bench.cpu")" \
  'BEGIN { printf "%s: %d msgs end to end in %.2f s (%.0f msgs/s); relay CPU %.2f s = %.0f us/msg; client%s CPU %.0f us/msg; both %.0f us/msg; disk writes %.1f KB/msg\n", m, n, w, n/w, c, c*1e6/n, (m == "sink" ? " and sink" : ""), b*1e6/n, (c+b)*1e6/n, wb/1024/n }'
grep -i "accepted\|p99" "$WORK/report" | head -3
