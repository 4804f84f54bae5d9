#!/usr/bin/env python3
"""slowwindows: when in a run the slow requests were, to line up with the relay's log.

usage:
  bin/sluice-bench http ... -rate 5000 -latency-log /tmp/lat.txt
  examples/bench/slowwindows.py /tmp/lat.txt [THRESHOLD_MS] [WINDOW_MS]

Reads the latency log (one line per accepted request: its start in Unix
nanoseconds and its latency in microseconds), cuts the run into windows of
WINDOW_MS (default 50) by start time and prints each window with a request
slower than THRESHOLD_MS (default 20): its start as UTC wall time (the
relay's log uses the same clock), requests, slowest, and how many were
over. Run the relay with -log-level debug (or look at its warnings) to see
what it did then: the storage engine's flushes and compactions are logged
at debug level, write stalls as warnings.
"""
import datetime
import signal
import sys


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # | head: no traceback
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    th = float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
    win = int(float(sys.argv[3]) * 1e6) if len(sys.argv) > 3 else 50_000_000
    if win <= 0:
        sys.exit('WINDOW_MS must be > 0')
    try:
        rows = [tuple(map(int, line.split())) for line in open(sys.argv[1]) if line.strip()]
    except ValueError as e:
        sys.exit('%s: not a latency log (want "START_NS LATENCY_US" lines): %s' % (sys.argv[1], e))
    if not rows:
        sys.exit('empty latency log')
    t0 = rows[0][0]
    windows = {}
    for at, us in rows:
        windows.setdefault((at - t0) // win, []).append(us / 1000)
    slow = 0
    for k in sorted(windows):
        lat = windows[k]
        if max(lat) > th:
            slow += 1
            at = datetime.datetime.fromtimestamp((t0 + k * win) / 1e9, datetime.timezone.utc)
            print('%s +%6d ms  n=%4d  max=%7.1f ms  over=%d' % (
                at.strftime('%H:%M:%S.%f')[:-3], k * win // 1_000_000, len(lat), max(lat),
                sum(1 for x in lat if x > th)))
    if not slow:
        print('no request slower than %g ms (%d requests, slowest %.1f ms)' % (
            th, len(rows), max(us for _, us in rows) / 1000))


if __name__ == '__main__':
    main()
