#!/usr/bin/env bash
# make bench (first part): Sluice side by side with Postfix, in one run, through the
# shared peer harness (../shared/bench, or $PEERS_BENCH):
#   smtp-source -> relay on 127.0.0.1 -> smtp-sink, inside a private network namespace,
#   fsync before every 250, one Lua stage (examples/bench/relay.lua), 3 repetitions.
# Prints the harness's table of medians, then Sluice's end-to-end rate and CPU per message
# as a ratio to Postfix's for each scenario, with the load average before and after.
#
# Needs root (the harness uses cgroups and a network namespace) and Postfix configured by
# the harness's setup_postfix.sh. Without them it says so and returns 0: run.sh then
# measures Sluice alone.
#
# Environment: PEERS_BENCH (harness directory), SIDE_SCENARIOS (SIZE:SESSIONS:MSGS[:d] ...,
# default the issue 21 set), SIDE_REPS (default 3), SIDE_TAG, SLUICE (binary, default bin/sluice).
set -uo pipefail
cd "$(dirname "$0")/../.."

PEERS_BENCH=${PEERS_BENCH:-$(cd .. && pwd)/shared/bench}
SIDE_SCENARIOS=${SIDE_SCENARIOS:-"2048:20:5000:d 2048:1:1000:d 51200:20:2000:d"}
SIDE_REPS=${SIDE_REPS:-3}
SIDE_TAG=${SIDE_TAG:-sluice-$(date -u +%Y%m%d-%H%M%S)}
SLUICE=${SLUICE:-$PWD/bin/sluice}

skip() {
  echo "# side by side with Postfix: skipped — $*"
  echo "#   (install it once with: sudo $PEERS_BENCH/setup_postfix.sh; then run make bench as root)"
  echo
  exit 0
}

[ -x "$PEERS_BENCH/run.sh" ] || skip "no peer harness at $PEERS_BENCH (set PEERS_BENCH)"
command -v postfix > /dev/null || [ -x /usr/sbin/postfix ] || skip "Postfix is not installed"
grep -q 'bench/setup_postfix.sh' /etc/postfix/main.cf 2> /dev/null || skip "Postfix is not configured by setup_postfix.sh"
[ "$(id -u)" = 0 ] || skip "the harness needs root"
[ -x "$SLUICE" ] || { echo "no $SLUICE: run make build" >&2; exit 1; }

WORK=$(mktemp -d /tmp/sluice-side.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
sed -e "s#{{SPOOL}}#$WORK/spool#" -e "s#{{EVENTS}}#$WORK/events.jsonl#" examples/bench/relay.lua > "$WORK/relay.lua"
export RUN_DIR=$WORK/peers

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "# side by side with Postfix — $(date -u +%FT%TZ) — $(nproc) cores — load average before: $load_before"
echo "# $PEERS_BENCH/run.sh --peers \"postfix custom\" --scenarios \"$SIDE_SCENARIOS\" --reps $SIDE_REPS"
if ! "$PEERS_BENCH/run.sh" --peers "postfix custom" \
  --custom-cmd "$SLUICE serve -c $WORK/relay.lua -log-level warn" --custom-port 2605 \
  --scenarios "$SIDE_SCENARIOS" --reps "$SIDE_REPS" --tag "$SIDE_TAG" > "$WORK/run.log" 2>&1; then
  echo "(side-by-side run failed; its log:)"
  tail -20 "$WORK/run.log"
  exit 1
fi
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
csv=$RUN_DIR/results-$SIDE_TAG.csv
"$PEERS_BENCH/summarize.sh" "$csv" | sed 's/^| custom |/| sluice |/'
echo
awk -F, -f examples/bench/ratio.awk "$csv"
echo "load average before: $load_before; after: $load_after"
# Keep the raw results: they are small and the only record of the run.
mkdir -p /tmp/sluice-side-results && cp "$csv" /tmp/sluice-side-results/ && echo "raw results: /tmp/sluice-side-results/$(basename "$csv")"
echo
