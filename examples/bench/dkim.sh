#!/usr/bin/env bash
# DKIM signing cost, end to end: the bench relay (examples/bench/relay.lua)
# without and with a dkim_sign stage, alternated in one run (issue 19's
# target: signing on costs at most 20% of throughput at 2 KB x 20
# sessions). MODES (default "off rsa ed25519 both"): off (no signing), rsa
# (one RSA-2048 signature), ed25519 (one Ed25519 signature), both (both
# signatures on every message). ROUNDS rounds of MODES, fresh spool per
# run; per run a 1,000 message warm-up, then SIZE B x SESSIONS sessions x N
# messages. Prints sluice-bench's report and the relay's CPU per message.
# BUILDS (default bin/sluice, built here): relay binaries to compare, each
# run in every mode of every round, interleaved (e.g. BUILDS="/tmp/old
# bin/sluice" for a before/after). PROFILE=dir writes each run's relay CPU
# profile there (sluice serve -cpuprofile).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
N=${N:-10000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-2048}
MODES=${MODES:-off rsa ed25519 both}
# Ports (relay SMTP, sink, relay HTTP): not relay.lua's defaults, so this
# can run beside another benchmark on the same machine.
PORT=${PORT:-2715}
SINK=${SINK:-2712}
HTTP=${HTTP:-8125}
BUILDS=${BUILDS:-bin/sluice}
PROFILE=${PROFILE:-}

go build -o bin/sluice ./cmd/sluice
go build -o bin/sluice-bench ./cmd/sluice-bench

pid=
W=
K=$(mktemp -d /tmp/sluice-dkimkeys.XXXXXX)
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; wait 2>/dev/null; [ -n "$W" ] && rm -rf "$W"; rm -rf "$K"' EXIT
# sluice-bench's messages are From: <a@x.test>
bin/sluice dkim keygen --domain x.test --selector r1 --algo rsa --out "$K" > /dev/null
bin/sluice dkim keygen --domain x.test --selector e1 --algo ed25519 --out "$K" > /dev/null

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

echo "# dkim_sign on/off — $(date -u +%FT%TZ) — $(nproc) cores, $(uname -m), $(go version | cut -d' ' -f3), load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
  for mode in $MODES; do
  for sluice in $BUILDS; do
    W=$(mktemp -d /tmp/sluice-dkimbench.XXXXXX)
    sed -e "s#{{SPOOL}}#$W/spool#" -e "s#{{EVENTS}}#$W/events.jsonl#" -e "s#127.0.0.1:2605#127.0.0.1:$PORT#" \
      -e "s#127.0.0.1:8025#127.0.0.1:$HTTP#" -e "s#port = 2602#port = $SINK#" examples/bench/relay.lua > "$W/relay.lua"
    case $mode in
      off) keys= ;;
      rsa) keys="{ domain = \"x.test\", selector = \"r1\", key = \"$K/x.test.r1.pem\" }" ;;
      ed25519) keys="{ domain = \"x.test\", selector = \"e1\", key = \"$K/x.test.e1.pem\" }" ;;
      both) keys="{ domain = \"x.test\", selector = \"r1\", key = \"$K/x.test.r1.pem\" }, { domain = \"x.test\", selector = \"e1\", key = \"$K/x.test.e1.pem\" }" ;;
      *) echo "unknown mode $mode" >&2; exit 2 ;;
    esac
    [ -n "$keys" ] && echo "sluice.stage(\"dkim\", sluice.builtin.dkim_sign { keys = { $keys } })" >> "$W/relay.lua"
    prof=()
    [ -n "$PROFILE" ] && prof=(-cpuprofile "$PROFILE/$(basename "$sluice").$mode.$r.prof")
    "$sluice" serve -c "$W/relay.lua" -log-level warn "${prof[@]}" 2> "$W/sluice.log" &
    pid=$!
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
    bin/sluice-bench smtp -target 127.0.0.1:$PORT -sink 127.0.0.1:$SINK -n 1000 -c "$SESSIONS" -size "$SIZE" > /dev/null
    c0=$(cpu_ticks "$pid")
    out=$(bin/sluice-bench smtp -target 127.0.0.1:$PORT -sink 127.0.0.1:$SINK -n "$N" -c "$SESSIONS" -size "$SIZE" -timeout 300s) || out="$out
(run failed)"
    c1=$(cpu_ticks "$pid")
    echo "## round $r, signing $mode, $sluice (load $(cut -d' ' -f1 /proc/loadavg))"
    echo "$out"
    echo "relay CPU $(( (c1-c0) * 1000000 / $(getconf CLK_TCK) / N )) µs/msg"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
    rm -rf "$W"; W=
  done
  done
done
