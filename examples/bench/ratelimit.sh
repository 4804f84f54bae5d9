#!/usr/bin/env bash
# Rate-limit stage cost, end to end: the bench relay (examples/bench/relay.lua)
# without the ratelimit stage (off), with it on the memory store (memory) and
# on Redis (redis: a redis-server this script starts on 127.0.0.1:6391, no
# persistence), alternated in one run: ROUNDS rounds of MODES, fresh spool
# per round. The stage has three limits that never trip, so every message
# pays the checks and none is refused: per client IP and per sender domain
# (messages) and per recipient domain (recipients), all three in one store
# call at RCPT TO (builds before 2026-11-30 13:00 UTC made two: MAIL FROM's
# limits at MAIL FROM).
# Per round: a 1,000 message warm-up, then SMTP SIZE B x SESSIONS sessions x
# N messages. Prints sluice-bench's report, the relay's (and Redis's) CPU
# per message and the scripts Redis ran per 1,000 messages.
#
# PROF=DIR writes each relay's CPU profile (serve -cpuprofile) to
# DIR/MODE-ROUND.pprof, for go tool pprof.
#
# A/B against another build: BASE_BIN=/path/to/old/sluice and modes with a
# "-base" suffix (MODES="redis-base redis off") run that binary with the
# same configuration, in the same rounds.
#
# Mode redis-lease1 is redis with sluice.redis's ratelimit_lease = 1 (no
# leases: every message's checks go to Redis, as builds before
# 2026-11-30 19:00 UTC did): MODES="off redis-lease1 redis".
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
N=${N:-10000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-2048}
MODES=${MODES:-off memory redis}
RPORT=${RPORT:-6391}
# The relay's SMTP and HTTP ports and the sink's (relay.lua's 2605, 8025
# and 2602 by default): set them when another benchmark holds those.
PORT=${PORT:-2605}
HPORT=${HPORT:-8025}
SPORT=${SPORT:-2602}

for p in "$PORT" "$HPORT" "$SPORT" "$RPORT"; do
  if (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then echo "127.0.0.1:$p is in use (another benchmark?): set PORT, HPORT, SPORT, RPORT" >&2; exit 1; fi
done

go build -o bin/sluice ./cmd/sluice
go build -o bin/sluice-bench ./cmd/sluice-bench

pid=
rpid=
W=
RD=$(mktemp -d /tmp/sluice-rlbench-redis.XXXXXX)
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; [ -n "$rpid" ] && kill $rpid 2>/dev/null; wait 2>/dev/null; [ -n "$W" ] && rm -rf "$W"; rm -rf "$RD"' EXIT

if [[ " $MODES " == *" redis"* ]]; then
  redis-server --port "$RPORT" --bind 127.0.0.1 --dir "$RD" --save "" --appendonly no --daemonize no \
    --protected-mode no --loglevel warning > "$RD/redis.log" 2>&1 &
  rpid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$RPORT) 2>/dev/null && break; sleep 0.1; done
fi

# Scripts Redis ran (EVALSHA and EVAL): one per round trip (builds before
# 2026-11-30 16:00 UTC: one per call, a batch being a pipeline of them).
redis_calls() {
  [ -n "$rpid" ] || { echo 0; return; }
  redis-cli -p "$RPORT" info commandstats 2>/dev/null | tr -d '\r' |
    awk -F'[=,:]' '/^cmdstat_(evalsha|eval):/ { n += $3 } END { print n + 0 }'
}

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

echo "# ratelimit stage off/memory/redis — $(date -u +%FT%TZ) — $(nproc) cores, $(uname -m), $(go version | cut -d' ' -f3), load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
  for mode in $MODES; do
    W=$(mktemp -d /tmp/sluice-rlbench.XXXXXX)
    sed -e "s#{{SPOOL}}#$W/spool#" -e "s#{{EVENTS}}#$W/events.jsonl#" \
      -e "s#127.0.0.1:2605#127.0.0.1:$PORT#" -e "s#127.0.0.1:8025#127.0.0.1:$HPORT#" -e "s#port = 2602,#port = $SPORT,#" examples/bench/relay.lua > "$W/relay.lua"
    bin=bin/sluice
    store=${mode%-base}
    if [ "$store" != "$mode" ]; then bin=${BASE_BIN:?set BASE_BIN for $mode}; fi
    lease=
    if [ "$store" = redis-lease1 ]; then store=redis; lease=", ratelimit_lease = 1"; fi
    if [ "$store" != off ]; then
      [ "$store" = redis ] && echo "sluice.redis { addr = \"127.0.0.1:$RPORT\", key_prefix = \"bench$r$mode:\"$lease }" >> "$W/relay.lua"
      # The stage goes before the routing stage.
      awk -v store="$store" '/^sluice.stage\("routing"/ { print "sluice.stage(\"limits\", sluice.builtin.ratelimit { store = \"" store "\", limits = {\n  { key = \"client_ip\", rate = \"100000000/hour\" },\n  { key = \"sender_domain\", rate = \"100000000/hour\" },\n  { key = \"recipient_domain\", rate = \"100000000/hour\", count = \"recipients\" },\n} })\n" } { print }' "$W/relay.lua" > "$W/r2" && mv "$W/r2" "$W/relay.lua"
    fi
    prof=(); [ -n "${PROF:-}" ] && prof=(-cpuprofile "$PROF/$mode-$r.pprof")
    "$bin" serve -c "$W/relay.lua" -log-level warn "${prof[@]}" 2> "$W/sluice.log" &
    pid=$!
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
    bin/sluice-bench smtp -target 127.0.0.1:$PORT -sink 127.0.0.1:$SPORT -n 1000 -c "$SESSIONS" -size "$SIZE" > /dev/null
    c0=$(cpu_ticks "$pid"); r0=0; [ -n "$rpid" ] && r0=$(cpu_ticks "$rpid"); k0=$(redis_calls)
    # A failed run (a message not accepted) is reported with its errors
    # line and the relay's warnings, and the rounds go on.
    out=$(bin/sluice-bench smtp -target 127.0.0.1:$PORT -sink 127.0.0.1:$SPORT -n "$N" -c "$SESSIONS" -size "$SIZE" -timeout 300s 2>&1) || out="$out
(this run FAILED)"
    c1=$(cpu_ticks "$pid"); r1=0; [ -n "$rpid" ] && r1=$(cpu_ticks "$rpid"); k1=$(redis_calls)
    tck=$(getconf CLK_TCK)
    echo "## round $r, ratelimit $mode"
    echo "$out"
    echo "relay CPU $(( (c1-c0) * 1000000 / tck / N )) µs/msg, redis-server CPU $(( (r1-r0) * 1000000 / tck / N )) µs/msg, Redis scripts run $(( (k1-k0) * 1000 / N )) per 1,000 msgs"
    kill "$pid"; wait "$pid" || true; pid=
    if grep -q . "$W/sluice.log"; then echo "relay warnings:"; cut -c1-200 "$W/sluice.log" | sort | uniq -c | sort -rn | head -5; fi
    rm -rf "$W"; W=
  done
done
