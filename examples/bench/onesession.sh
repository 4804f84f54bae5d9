#!/usr/bin/env bash
# onesession.sh: the side-by-side run's 2 KB x 1 session scenario, Sluice only,
# measured per message, with A/B builds or settings interleaved.
#
#   smtp-source -d -s 1 (HELO, no pipelining, one connection reused, 4 round trips a
#   message) -> relay (examples/bench/relay.lua: one Lua stage, fsync before every 250,
#   events file) -> smtp-sink (Postfix's tools, as ../shared/bench uses them)
#
# Each run gets a private network namespace (unshare -n: fixed ports, no clash with
# other runs on the machine), a fresh spool, a warm-up (WARMUP), then N messages.
# It prints, per run: msgs/s (until smtp-source has every 250), the relay's CPU per
# message (user+system from /proc/PID/stat) and the load average; with PERF=1 also the
# relay's context switches and system calls per message (perf stat on syscall
# tracepoints: counts, which depend far less on the machine's load than times do).
#
# Usage (root: unshare and perf need it):
#   examples/bench/onesession.sh "A=bin/sluice" "B=/tmp/old/sluice" ...
#   VARIANT = NAME=BINARY[,ENV=VALUE...], e.g. "gmp1=bin/sluice,GOMAXPROCS=1"
# Environment: N (messages per run, 3000), ROUNDS (3), PERF (unset: no counts),
#   SERVE_FLAGS (extra `sluice serve` flags, e.g. "-cpuprofile /tmp/cpu.pb": one run),
#   WARMUP (messages sent over 20 sessions before the run, 500; e.g. enough to make
#   the WAL rotate a few times with a small memtable), RELAY_LUA (the config template,
#   examples/bench/relay.lua; {{SPOOL}} and {{EVENTS}} are filled in), SESSIONS (1: the
#   measured run's smtp-source -s; 20 gives the side-by-side's 2 KB x 20 scenario).
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-3000}
WARMUP=${WARMUP:-500}
SESSIONS=${SESSIONS:-1}
RELAY_LUA=${RELAY_LUA:-examples/bench/relay.lua}
ROUNDS=${ROUNDS:-3}
[ "$#" -gt 0 ] || set -- "sluice=bin/sluice"
for t in smtp-source smtp-sink unshare; do
  command -v "$t" > /dev/null || { echo "onesession.sh: $t is not installed (apt-get install postfix util-linux)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "onesession.sh: needs root (unshare -n, perf)" >&2; exit 1; }

# one NAME BINARY ENV...: one run inside a private network namespace.
one() {
  local name=$1 bin=$2; shift 2
  local w; w=$(mktemp -d /tmp/sluice-one.XXXXXX)
  sed -e "s#{{SPOOL}}#$w/spool#" -e "s#{{EVENTS}}#$w/events.jsonl#" "$RELAY_LUA" > "$w/relay.lua"
  env "$@" unshare -n bash -c '
    set -u
    ip link set lo up
    name=$1 bin=$2 w=$3 n=$4 warm=$5 sess=$6
    smtp-sink -u nobody -c 127.0.0.1:2602 1000 > /dev/null 2>&1 &
    sink=$!
    "$bin" serve -c "$w/relay.lua" -log-level warn ${SERVE_FLAGS:-} 2> "$w/sluice.log" &
    pid=$!
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/2605) 2>/dev/null && break; sleep 0.1; done
    smtp-source -d -s 20 -m "$warm" -l 2048 -f a@example.com -t b@example.org 127.0.0.1:2605
    sleep 0.3
    ticks() { awk "{print \$14+\$15}" /proc/$pid/stat; }
    if [ -n "${PERF:-}" ]; then
      ev=context-switches; for c in fdatasync fsync futex nanosleep epoll_pwait write read recvfrom; do ev="$ev,syscalls:sys_enter_$c"; done
      perf stat -x, -e "$ev" -p $pid -o "$w/perf.csv" & perfpid=$!
      sleep 0.2
    fi
    t0=$(ticks); s0=$EPOCHREALTIME
    smtp-source -d -s "$sess" -m "$n" -l 2048 -f a@example.com -t b@example.org 127.0.0.1:2605
    s1=$EPOCHREALTIME
    sleep 0.3 # the last deliveries and their outcomes
    t1=$(ticks)
    counts=""
    if [ -n "${PERF:-}" ]; then
      kill -INT $perfpid; wait $perfpid || true
      counts=$(awk -F, -v n="$n" "/^[0-9]/{sub(\"syscalls:sys_enter_\",\"\",\$3); printf \" %s %.1f\", \$3, \$1/n}" "$w/perf.csv")
    fi
    awk -v a="$t0" -v b="$t1" -v n="$n" -v s0="$s0" -v s1="$s1" -v hz="$(getconf CLK_TCK)" \
      -v ld="$(cut -d" " -f1 /proc/loadavg)" -v name="$name" -v c="$counts" \
      "BEGIN{printf \"%-10s %6.0f msgs/s  relay CPU %4.0f us/msg  load %5s%s\n\", name, n/(s1-s0), (b-a)/hz*1e6/n, ld, (c==\"\" ? \"\" : \"  per msg:\" c)}"
    kill $pid; wait $pid 2>/dev/null
    kill $sink; wait $sink 2>/dev/null
    grep -q . "$w/sluice.log" && { echo "  relay log:"; head -5 "$w/sluice.log"; }
    exit 0
  ' _ "$name" "$bin" "$w" "$N" "$WARMUP" "$SESSIONS"
  rm -rf "$w"
}

echo "# 2 KB, smtp-source -d -s $SESSIONS — $(date -u +%FT%TZ) — $(nproc) cores — N=$N ROUNDS=$ROUNDS"
for ((r = 1; r <= ROUNDS; r++)); do
  for v in "$@"; do
    name=${v%%=*}; rest=${v#*=}
    IFS=, read -r -a parts <<< "$rest"
    one "$name" "${parts[0]}" "${parts[@]:1}"
  done
done
