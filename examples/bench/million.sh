#!/usr/bin/env bash
# A million queued (issue 21): N recipients queued for a destination that is
# down, measured on the real binary.
#
#   examples/bench/million.sh                 # N=1000000, one destination
#   N=20000 examples/bench/million.sh         # CI-size
#   DESTS=10000 N=50000 examples/bench/million.sh   # 10,000 destinations, ~5 each
#
# Steps and figures (one line each, "key value"):
#   1. start sluice (examples/bench/million.lua.in, a template), acceptance probe on an empty
#      queue: PROBES x PROBE_N messages (sluice-bench smtp, 2 KB x 20 sessions)
#   2. fill: N messages of SIZE bytes, one recipient each, to the down
#      destination; wait until each has had its one failed attempt
#   3. RSS with N queued (VmRSS, and the Go heap from /metrics: in use, and
#      live after the last collection), per recipient. The probes' messages
#      queue too: "for T queued" is N + PROBES x PROBE_N (80,000 at N=20000),
#      and the per-recipient figure divides by T
#   4. acceptance probe again with N queued (same PROBES x PROBE_N)
#   4b. HOLD=1: hold every queued recipient (`sluice queue hold --state
#      deferred`, as postsuper -h ALL), time it, the peak RSS while it held
#      them (VmHWM, reset first), RSS and heap with them held; the restarts
#      below then load them held; released (and that peak) before the drain
#   5. restart: SIGTERM, start again; restart time = exec -> SMTP port open
#      (the listeners start after the queues are rebuilt); RSS after restart.
#      RESTART_ALSO="other builds" restarts each of them on the spool first.
#   6. drain: start a sink at the destination, `sluice queue flush`; drain
#      time and rate until the sink has every queued message
# Needs bin/sluice-bench and bin/sluice (make build; SLUICE=path for another
# build). WORK=dir KEEP=1 keeps the spool, e.g. to restart another build on it.
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-1000000}
SIZE=${SIZE:-1024}
DESTS=${DESTS:-1}
MEMTABLE_MB=${MEMTABLE_MB:-64}   # sluice.spool memtable_mb (outside the Go heap, in the RSS)
C=${C:-20}
PROBE_N=${PROBE_N:-20000}
PROBES=${PROBES:-3}
KEEP=${KEEP:-}
HOLD=${HOLD:-}
# Ports of its own, so that it can run beside make bench (2605/8025/2602) and other benchmarks.
SMTP_PORT=${SMTP_PORT:-3725} HTTP_PORT=${HTTP_PORT:-8725} ADMIN_PORT=${ADMIN_PORT:-9725} SINK_PORT=${SINK_PORT:-3722}
WORK=${WORK:-$(mktemp -d /tmp/sluice-million.XXXXXX)}
mkdir -p "$WORK"
SLUICE=${SLUICE:-bin/sluice}   # the binary under test
# Check the numbers before starting anything: a fill that sluice-bench
# refuses (N=0, SIZE=-1) would otherwise leave only the probes queued and
# report their figures as the queue's.
for v in N:1 SIZE:0 DESTS:1 MEMTABLE_MB:1 C:1 PROBE_N:1 PROBES:0 SMTP_PORT:1 HTTP_PORT:1 ADMIN_PORT:1 SINK_PORT:1; do
  name=${v%:*} min=${v#*:} val=${!name}
  if ! [[ $val =~ ^[0-9]+$ ]] || [ "$val" -lt "$min" ]; then
    echo "million.sh: $name=$val: want a whole number >= $min" >&2; exit 2
  fi
done
pid= sinkpid=
cleanup() {
  [ -n "$sinkpid" ] && kill "$sinkpid" 2>/dev/null && wait "$sinkpid" 2>/dev/null
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  [ -z "$KEEP" ] && rm -rf "$WORK"
  true
}
trap cleanup EXIT

sed -e "s#{{SPOOL}}#$WORK/spool#" -e "s#{{EVENTS}}#$WORK/events.jsonl#" -e "s#{{DESTS}}#$DESTS#" -e "s#{{MEMTABLE_MB}}#$MEMTABLE_MB#" \
  -e "s#{{SMTP_PORT}}#$SMTP_PORT#" -e "s#{{HTTP_PORT}}#$HTTP_PORT#" -e "s#{{ADMIN_PORT}}#$ADMIN_PORT#" -e "s#{{SINK_PORT}}#$SINK_PORT#" \
  examples/bench/million.lua.in > "$WORK/million.lua"

say() { printf '%-28s %s\n' "$1" "$2"; }
now() { date +%s.%N; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; }
# peak_reset starts a new peak of resident memory (Linux: VmHWM back to
# VmRSS); peak_kb is the peak since.
peak_reset() { echo 5 > "/proc/$pid/clear_refs" 2>/dev/null || true; }
peak_kb() { awk '/^VmHWM/ {print $2}' "/proc/$pid/status"; }
# heap_mb: the Go heap in use (live data and garbage not collected yet) and
# the live heap after the last collection.
heap_mb() { curl -fsS http://127.0.0.1:$ADMIN_PORT/metrics 2>/dev/null | awk '/^go_memstats_heap_inuse_bytes / {u = $2} /^go_gc_heap_live_bytes / {l = $2} END {printf "in use %.0f, live %.0f", u/1048576, l/1048576}'; }
wait_port() { for _ in $(seq 6000); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.01; done; return 1; }
since() { echo "$1 $(now)" | awk '{printf "%.2f", $2-$1}'; }
start() { # sets pid; prints the seconds from exec to both ports open
  local t0; t0=$(now)
  "$SLUICE" serve -c "$WORK/million.lua" -log-level warn > /dev/null 2>> "$WORK/sluice.log" &
  pid=$!
  wait_port "$SMTP_PORT" && wait_port "$HTTP_PORT" && kill -0 "$pid" 2>/dev/null || { echo "sluice did not start" >&2; cat "$WORK/sluice.log" >&2; exit 1; }
  say "$1" "$(since "$t0") s wall, $(awk '{printf "%.1f", ($14+$15)/100}' "/proc/$pid/stat") s CPU"
}
stop() { local t0; t0=$(now); kill "$pid"; wait "$pid" || true; pid=; say stop_s "$(since "$t0")"; }
restart_with() { # stop, start binary $1 on the same spool: restart time, RSS
  local keep=$SLUICE
  SLUICE=$1
  stop
  start "restart_s ($(basename "$1"))"
  sleep 5
  local r; r=$(rss_kb)
  say "rss_restarted_mb ($(basename "$1"))" "$(( r / 1024 )) (heap $(heap_mb) MB), $(( r * 1024 / total )) B/rcpt, queued $(queued) of $total"
  SLUICE=$keep
}
# queued: recipients ready + waiting + held over every queue (sluice queue list --json).
in_queue() { curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" 2>/dev/null | awk '/^sluice_queue_messages / {print $2 + 0}'; }
queued() { "$SLUICE" queue list --json 2>/dev/null | jq '[.queues[] | (.ready + .waiting + .held)] | add // 0'; }
waiting() { "$SLUICE" queue list --json 2>/dev/null | jq '[.queues[] | .waiting] | add // 0'; }
# Every run of sluice-bench appends its count of accepted messages to
# $WORK/accepted: the queue must then hold their sum (a message refused with
# a 4xx under load is not queued).
accepted() { touch "$WORK/accepted"; awk '{n += $1} END {print n + 0}' "$WORK/accepted"; }
probe() { # acceptance msgs/s of PROBES runs, space-separated
  local out="" j
  for _ in $(seq "$PROBES"); do
    j=$(bin/sluice-bench smtp -target "127.0.0.1:$SMTP_PORT" -sink "" -n "$PROBE_N" -c 20 -size 2048 -json -timeout 600s || true)
    jq -r .accepted <<< "$j" >> "$WORK/accepted"
    r=$(jq -r .accepted_per_sec <<< "$j")
    out="$out ${r%.*}"
  done
  echo "$out"
}
settle() { # wait until every queued recipient has had its failed attempt
  local want=$1
  for _ in $(seq 3600); do
    w=$(waiting); [ "${w:-0}" -ge "$want" ] && return 0; sleep 1
  done
  echo "settle: only ${w:-0} of $want waiting" >&2; return 1
}

say "# sluice million" "$(date -u +%FT%TZ) N=$N SIZE=$SIZE DESTS=$DESTS MEMTABLE_MB=$MEMTABLE_MB, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
start start_s
export SLUICE_URL=http://127.0.0.1:$HTTP_PORT
SLUICE_API_KEY=$("$SLUICE" apikey create --tenant bench --scope send,admin -c "$WORK/million.lua" 2>/dev/null)
export SLUICE_API_KEY
sleep 2
say rss_empty_mb "$(( $(rss_kb) / 1024 )) (heap $(heap_mb) MB)"
say accept_empty_msgs_s "$(probe)"
settle "$(accepted)"

t0=$(now)
bin/sluice-bench smtp -target "127.0.0.1:$SMTP_PORT" -sink "" -n "$N" -c "$C" -size "$SIZE" -timeout 7200s -json > "$WORK/fill.json" || true
if ! jq -e .accepted "$WORK/fill.json" > /dev/null 2>&1; then
  echo "million.sh: the fill did not run (sluice-bench smtp -n $N -c $C -size $SIZE gave no report)" >&2; exit 1
fi
jq -r .accepted "$WORK/fill.json" >> "$WORK/accepted"
say fill_s "$(since "$t0") ($(jq -r '"\(.accepted) of \(.n) accepted, \(.accepted_per_sec | floor) msgs/s"' "$WORK/fill.json"))"
total=$(accepted)
settle "$total"
say settled_s "$(since "$t0")"
sleep 5
rss=$(rss_kb)
say rss_queued_mb "$(( rss / 1024 )) (heap $(heap_mb) MB) for $total queued"
say rss_per_rcpt_bytes "$(( rss * 1024 / total ))"
say accept_queued_msgs_s "$(probe)"
total=$(accepted)
settle "$total"
say spool_du_mb "$(du -sm "$WORK/spool" | cut -f1)"
if [ -n "$HOLD" ]; then
  peak_reset
  t0=$(now)
  held=$("$SLUICE" queue hold --state deferred --timeout 600s)
  say hold_s "$(since "$t0") ($held)"
  say rss_hold_peak_mb "$(( $(peak_kb) / 1024 )) (the peak while it held them)"
  sleep 5
  r=$(rss_kb)
  say rss_held_mb "$(( r / 1024 )) (heap $(heap_mb) MB), $(( r * 1024 / total )) B/rcpt"
fi

# RESTART_ALSO="bin ...": restart each of these builds on the same spool
# first (same-run comparison of restart time and memory), then $SLUICE.
for b in ${RESTART_ALSO:-}; do restart_with "$b"; done
restart_with "$SLUICE"

listen=127.0.0.1:$SINK_PORT; [ "$DESTS" -gt 1 ] && listen=0.0.0.0:$SINK_PORT
bin/sluice-bench sink -listen "$listen" > "$WORK/sink.txt" &
sinkpid=$!
wait_port "$SINK_PORT"
t0=$(now)
if [ -n "$HOLD" ]; then
  peak_reset
  say release "$("$SLUICE" queue release --state held --timeout 600s)"
  say rss_release_peak_mb "$(( $(peak_kb) / 1024 )) (the peak while it released them)"
fi
"$SLUICE" queue flush > /dev/null
# Drained: no message left with a recipient to deliver (the gauge counts a
# recipient until its outcome is recorded; the queue listing does not show
# the ones a worker has taken).
for _ in $(seq 36000); do
  q=$(in_queue); [ "${q:-1}" -eq 0 ] && break; sleep 1
done
dt=$(since "$t0")
kill -INT "$sinkpid"; wait "$sinkpid" 2>/dev/null; sinkpid=
say drain_s "$dt ($(echo "$total $dt" | awk '{printf "%.0f", $1/$2}') msgs/s; messages left: $q; the sink got $(awk '/^total/ {print $2}' "$WORK/sink.txt"))"
say rss_drained_mb "$(( $(rss_kb) / 1024 )) (heap $(heap_mb) MB)"
if grep -q . "$WORK/sluice.log"; then
  echo "## relay warnings and errors"
  cut -c1-300 "$WORK/sluice.log" | sort | uniq -c | sort -rn | head -10
fi
