#!/usr/bin/env bash
# Issue 18 (shaping): does outbound shaping slow the default path?
#   examples/bench/shaping.sh BASE_BIN [REPS]
# Runs SMTP 2 KB x 20 sessions x 10,000 messages (and 2 KB x 1 x 2,000)
# through three relays, alternating, REPS times (default 3):
#   base     BASE_BIN (a build of the commit before shaping) with examples/bench/relay.lua
#   new      bin/sluice (this tree) with the same relay.lua: shaping off
#   shaped   bin/sluice with sluice.shaping on: a shaping file with a
#            message rate that never binds (100000/s), so every message
#            takes a lease and a limiter token but is never held
# and prints one line per run, with the relay's CPU (user+sys) per
# message. Compare medians from the same run only.
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=${1:?usage: shaping.sh BASE_BIN [REPS]}
REPS=${2:-3}
SCENARIOS=${SCENARIOS:-"2048:20:10000 2048:1:2000"}
# Ports (other than make bench's, so both can run on one machine).
SMTP_PORT=${SMTP_PORT:-2705} SINK_PORT=${SINK_PORT:-2702} HTTP_PORT=${HTTP_PORT:-8125}
WORK=$(mktemp -d /tmp/sluice-shaping-bench.XXXXXX)
pid=""
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT

cat > "$WORK/shaping.toml" <<'TOML'
["default"]
connection_limit = 20
max_deliveries_per_connection = 1000
max_message_rate = "100000/s,max_burst=1000"
TOML

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; } # clock ticks of user+sys

run() { # name binary extra-config
  local name=$1 bin=$2 extra=$3
  rm -rf "$WORK/spool" "$WORK/events.jsonl"
  sed -e "s#{{SPOOL}}#$WORK/spool#" -e "s#{{EVENTS}}#$WORK/events.jsonl#" -e "s#127.0.0.1:2605#127.0.0.1:$SMTP_PORT#" \
    -e "s#port = 2602#port = $SINK_PORT#" -e "s#127.0.0.1:8025#127.0.0.1:$HTTP_PORT#" examples/bench/relay.lua > "$WORK/relay.lua"
  printf '%s\n' "$extra" >> "$WORK/relay.lua"
  "$bin" serve -c "$WORK/relay.lua" -log-level warn 2>> "$WORK/sluice.log" &
  pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$SMTP_PORT) 2>/dev/null && break; sleep 0.1; done
  bin/sluice-bench smtp -target 127.0.0.1:$SMTP_PORT -sink 127.0.0.1:$SINK_PORT -n 1000 -c 20 -size 2048 > /dev/null # warm-up
  for sc in $SCENARIOS; do
    IFS=: read -r size sess n <<< "$sc"
    printf '%-7s %5s B x %2s x %6s: ' "$name" "$size" "$sess" "$n"
    local t0; t0=$(cpu "$pid")
    bin/sluice-bench smtp -target 127.0.0.1:$SMTP_PORT -sink 127.0.0.1:$SINK_PORT -n "$n" -c "$sess" -size "$size" -timeout 300s 2>&1 | tr '\n' ' ' || true
    # relay CPU (user+sys) per message: steadier than msgs/s on a shared machine
    echo "cpu_us_per_msg $(( ($(cpu "$pid") - t0) * 1000000 / $(getconf CLK_TCK) / n ))"
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
}

echo "# shaping bench — $(date -u +%FT%TZ) — $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
SHAPED="sluice.shaping { files = { \"$WORK/shaping.toml\" } }"
for r in $(seq "$REPS"); do # the order flips every round: position in a round must not favour one build
  if (( r % 2 )); then
    run base "$BASE" ""; run new bin/sluice ""; run shaped bin/sluice "$SHAPED"
  else
    run shaped bin/sluice "$SHAPED"; run new bin/sluice ""; run base "$BASE" ""
  fi
done
if grep -q . "$WORK/sluice.log"; then
  echo "## relay warnings and errors during the runs"
  cut -c1-300 "$WORK/sluice.log" | sort | uniq -c | sort -rn | head -20
fi
