#!/usr/bin/env bash
# Plugin stage cost, end to end: the bench relay (examples/bench/relay.lua)
# without and with a plugin stage, alternated in one run. PLUGIN=stamp (the
# default; internal/plugin/testdata/stamp: asks for the header only, inspects
# it and adds one field — the issue's performance target) or PLUGIN=scorer
# (examples/plugins/scorer: reads the whole message, runs its regular
# expressions, adds X-Spam-Score). Rounds alternate
# (ROUNDS rounds of off, on), fresh spool per round. Per round: a 1,000
# message warm-up, then SMTP SIZE B x SESSIONS sessions x N messages. Prints
# sluice-bench's report, the relay's (and the plugin's) CPU per message, and
# in the "on" rounds the p50/p99 of sluice_plugin_call_duration_seconds
# (from the admin listener, interpolated within its buckets).
# MODES (default "off on") lists the modes of a round: off (no plugin stage),
# on (the plugin, over its Calls stream: protocol 1.1, the SDK's default),
# unary (the same plugin served with sdk.WithoutStreaming through its
# STAMP_UNARY environment variable: one unary RPC per call, as a protocol 1.0 plugin;
# stamp only), fields (the header as one entry per field, as a protocol 1.1
# plugin: sdk.WithHeaderFields through STAMP_FIELDS; stamp only), e.g.
# MODES="off on unary fields", goprocs (the plugin served with
# sdk.WithMaxProcs(0), Go's GOMAXPROCS instead of the SDK's 1, through its
# STAMP_GOPROCS environment variable; stamp only), procs2 (GOMAXPROCS=2 in
# its env), parsed (the header parsed into msg.Header for the hook, as for a
# plugin without sdk.HeaderReader, through STAMP_PARSED; stamp only), deepsleep
# (GODEBUG=schedtrace=0 in its env: the Go runtime's sysmon sleeps deeply
# when the plugin is idle, as before Sluice kept it awake by default;
# docs/plugins.md, "CPU of a Go plugin"), workers (each call handed to a
# worker goroutine, the SDK's default, through STAMP_WORKERS, instead of
# run on the stream's receiving goroutine: sdk.WithInlineCalls; stamp only). With OLD_SLUICE and OLD_STAMP (paths of a
# relay and a stamp plugin built from an earlier commit), mode "old" runs
# those, plugin on: before and after in one run. SERVE_FLAGS adds flags to
# `sluice serve`, %MODE% in them becoming the mode (per-mode CPU profiles:
# SERVE_FLAGS="-cpuprofile /tmp/cpu.%MODE%.pb"). PLUGIN_PROFILE=DIR writes
# the stamp plugin's CPU profile of each round to DIR/plugin.MODE.ROUND.pb
# (through its STAMP_CPUPROFILE, for 600 s or until it stops). PERF=1 adds,
# per process and per message of the measured run, the context switches
# and system calls counted by `perf stat -p` (raw_syscalls:sys_enter; needs
# perf and the permission to trace the processes); PERF_EVENTS replaces
# that list (e.g. "syscalls:sys_enter_write,syscalls:sys_enter_futex").
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-4}
N=${N:-10000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-2048}
SERVE_FLAGS=${SERVE_FLAGS:-}
PLUGIN=${PLUGIN:-stamp}
MODES=${MODES:-off on}
PERF=${PERF:-}
PERF_EVENTS=${PERF_EVENTS:-context-switches,raw_syscalls:sys_enter}
PLUGIN_PROFILE=${PLUGIN_PROFILE:-}
# Ports (relay SMTP, sink, relay HTTP, admin): not relay.lua's defaults, so
# that this bench does not meet another one running on the machine.
PORT=${PORT:-2815}
SINK=${SINK:-2812}
HTTP=${HTTP:-8225}
ADMIN=${ADMIN:-9202}
for p in $PORT $SINK $HTTP $ADMIN; do
  if (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then
    echo "port $p is in use (another bench?): set PORT, SINK, HTTP, ADMIN" >&2; exit 2
  fi
done

go build -o bin/sluice ./cmd/sluice
go build -o bin/sluice-bench ./cmd/sluice-bench
case $PLUGIN in
  stamp) go build -o bin/stamp-plugin ./internal/plugin/testdata/stamp; PCMD=$(pwd)/bin/stamp-plugin; PCFG='{}' ;;
  scorer) go build -o bin/scorer ./examples/plugins/scorer; PCMD=$(pwd)/bin/scorer; PCFG='{ threshold = 100 }' ;;
  *) echo "PLUGIN=stamp or scorer" >&2; exit 2 ;;
esac

pid=
W=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; wait 2>/dev/null; [ -n "$W" ] && rm -rf "$W"' EXIT

# cpu_ticks PID: user+sys clock ticks of a process.
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# quantile Q: the Q quantile of sluice_plugin_call_duration_seconds{hook="on_message"}
# from the Prometheus text on stdin, in µs.
quantile() {
  awk -v q="$1" '/^sluice_plugin_call_duration_seconds_bucket.*hook="on_message"/ {
      match($0, /le="[^"]*"/); le = substr($0, RSTART+4, RLENGTH-5); n++; les[n] = le; cs[n] = $NF }
    END { total = cs[n]; want = q * total; prevle = 0; prevc = 0
      for (i = 1; i <= n; i++) { if (cs[i] >= want) { if (les[i] == "+Inf") { print "> " prevle*1e6; exit }
          printf "%.0f\n", (prevle + (les[i]-prevle) * (want-prevc) / (cs[i]-prevc)) * 1e6; exit }
        prevle = les[i]; prevc = cs[i] } }'
}

echo "# plugin stage ($PLUGIN) on/off — $(date -u +%FT%TZ) — $(nproc) cores, $(uname -m), $(go version | cut -d' ' -f3), load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
  for mode in $MODES; do
    W=$(mktemp -d /tmp/sluice-plugbench.XXXXXX)
    sed -e "s#{{SPOOL}}#$W/spool#" -e "s#{{EVENTS}}#$W/events.jsonl#" -e "s#127.0.0.1:2605#127.0.0.1:$PORT#" \
      -e "s#127.0.0.1:8025#127.0.0.1:$HTTP#" -e "s#port = 2602#port = $SINK#" examples/bench/relay.lua > "$W/relay.lua"
    echo "sluice.listen_admin { addr = \"127.0.0.1:$ADMIN\" }" >> "$W/relay.lua"
    SLUICE=bin/sluice; MCMD=$PCMD
    [ "$mode" = old ] && { SLUICE=${OLD_SLUICE:?mode old needs OLD_SLUICE}; MCMD=${OLD_STAMP:?mode old needs OLD_STAMP}; }
    if [ "$mode" != off ]; then
      PENV='{}'
      [ "$mode" = unary ] && PENV='{ STAMP_UNARY = "1" }'
      [ "$mode" = fields ] && PENV='{ STAMP_FIELDS = "1" }'
      [ "$mode" = goprocs ] && PENV='{ STAMP_GOPROCS = "1" }'
      [ "$mode" = procs2 ] && PENV='{ GOMAXPROCS = "2" }'
      [ "$mode" = parsed ] && PENV='{ STAMP_PARSED = "1" }'
      [ "$mode" = deepsleep ] && PENV='{ GODEBUG = "schedtrace=0" }'
      [ "$mode" = workers ] && PENV='{ STAMP_WORKERS = "1" }'
      if [ -n "$PLUGIN_PROFILE" ]; then
        prof="STAMP_CPUPROFILE = \"$PLUGIN_PROFILE/plugin.$mode.$r.pb,600\""
        if [ "$PENV" = '{}' ]; then PENV="{ $prof }"; else PENV="${PENV%\}}, $prof }"; fi
      fi
      # The plugin stage goes before the routing stage: insert it after "stamp".
      awk -v cmd="$MCMD" -v cfg="$PCFG" -v env="$PENV" '/^sluice.stage\("routing"/ { print "sluice.stage(\"plugin\", sluice.plugin { cmd = \"" cmd "\", timeout = \"2s\", env = " env ", config = " cfg " })\n" } { print }' "$W/relay.lua" > "$W/r2" && mv "$W/r2" "$W/relay.lua"
    fi
    # shellcheck disable=SC2086
    "$SLUICE" serve -c "$W/relay.lua" -log-level warn ${SERVE_FLAGS//%MODE%/$mode} 2> "$W/sluice.log" &
    pid=$!
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
    # A warm-up that loses a message (seen under a load average of 20)
    # is reported, not fatal: the measured run's report tells.
    if ! warm=$(bin/sluice-bench smtp -target 127.0.0.1:$PORT -sink 127.0.0.1:$SINK -n 1000 -c "$SESSIONS" -size "$SIZE" 2>&1); then
      echo "warm-up ($mode) failed:"; echo "$warm" | grep -Ev '^ *(latency|end-to-end)' | sed 's/^/  /'
    fi
    ppid=$(pgrep -P "$pid" || true)
    c0=$(cpu_ticks "$pid"); p0=0; [ -n "$ppid" ] && p0=$(cpu_ticks "$ppid")
    curl -s http://127.0.0.1:$ADMIN/metrics > "$W/m0"
    perfs=
    if [ -n "$PERF" ]; then
      perf stat -x, -e "$PERF_EVENTS" -p "$pid" -o "$W/perf.relay" & perfs=$!
      [ -n "$ppid" ] && { perf stat -x, -e "$PERF_EVENTS" -p "$ppid" -o "$W/perf.plugin" & perfs="$perfs $!"; }
      sleep 0.2
    fi
    out=$(bin/sluice-bench smtp -target 127.0.0.1:$PORT -sink 127.0.0.1:$SINK -n "$N" -c "$SESSIONS" -size "$SIZE" -timeout 300s 2>&1) || out="$out
RUN FAILED (its figures below do not count)"
    c1=$(cpu_ticks "$pid"); p1=0; [ -n "$ppid" ] && p1=$(cpu_ticks "$ppid")
    tck=$(getconf CLK_TCK)
    echo "## round $r, plugin $mode"
    echo "$out"
    echo "relay CPU $(( (c1-c0) * 1000000 / tck / N )) µs/msg, plugin process CPU $(( (p1-p0) * 1000000 / tck / N )) µs/msg"
    if [ -n "$perfs" ]; then
      # shellcheck disable=SC2086
      kill -INT $perfs 2>/dev/null || true; wait $perfs 2>/dev/null || true
      for who in relay plugin; do
        [ -f "$W/perf.$who" ] && awk -F, -v n="$N" -v who="$who" '$1 ~ /^[0-9]/ { s = s sprintf(" %s %.2f,", $3, $1/n) }
          END { sub(/,$/, "", s); print who " per message:" s }' "$W/perf.$who"
      done
    fi
    if [ "$mode" != off ]; then
      # The histogram of the measured run only: the warm-up's counts subtracted.
      curl -s http://127.0.0.1:$ADMIN/metrics > "$W/m1"
      awk 'NR==FNR { if ($1 ~ /^sluice_plugin_call_duration_seconds_bucket/) base[$1] = $2; next }
        $1 ~ /^sluice_plugin_call_duration_seconds_bucket/ { print $1, $2 - base[$1] }' "$W/m0" "$W/m1" > "$W/hist"
      echo "plugin on_message call p50 $(quantile 0.5 < "$W/hist") µs, p99 $(quantile 0.99 < "$W/hist") µs"
    fi
    kill "$pid"; wait "$pid" || true; pid=
    if grep -q . "$W/sluice.log"; then echo "relay warnings:"; cut -c1-200 "$W/sluice.log" | sort | uniq -c | sort -rn | head -5; fi
    rm -rf "$W"; W=
  done
done
