#!/usr/bin/env python3
"""traceanat_http: where an HTTP request's time in the relay goes, slow ones against typical ones.

usage:
  SERVE_FLAGS="-trace /tmp/t.out" HTTP_SCENARIOS="64:10000:0" SCENARIOS=" " examples/bench/run.sh
  go tool trace -d=parsed /tmp/t.out > /tmp/t.txt
  examples/bench/traceanat_http.py /tmp/t.txt

Every keep-alive connection is one goroutine (net/http's conn.serve). A request
there runs from the end of the previous response's write to the end of its own;
the time it waited for the client (network reads) is left out, so what is left
is the relay's: running, runnable (waiting for a CPU), in system calls, and
waiting, the last split by kind: its group commit (Spool.write), net/http's
abortPendingRead (the connection's background reader), others. For the median
request, the 90th and 99th percentile ones and the slowest 1% together it prints
the mean of each, and each commit wait split at the WAL fdatasync that ended it
(before it started, and of that the time in earlier fdatasyncs that did not
take this commit; the fdatasync; after it: the wake-up back to the request).
Times are wall times under tracing; the trace slows the relay somewhat.
"""
import bisect
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from traceanat import having, parse, wal_syncs  # noqa: E402  (the same parsed-trace reader)


def kind(to, reason, st):
    if to != 'Waiting':
        return to.lower()
    if any('Spool).write' in s for s in st):
        return 'wait: group commit'
    if any('abortPendingRead' in s for s in st):
        return 'wait: abortPendingRead'
    if reason == 'network' or any('connReader).Read' in s for s in st):
        return 'client'  # waiting for the client's bytes (the next request, its body)
    return 'wait: ' + reason


def requests(evs):
    """Per request: ({kind: ns}, [(commit wait start, end)]), split at response writes."""
    out, cur, commits = [], collections.Counter(), []
    for (t, _, to, reason, st), nxt in zip(evs, evs[1:]):
        d = nxt[0] - t
        k = kind(to, reason, st)
        cur[k] += d
        if k == 'wait: group commit':
            commits.append((t, nxt[0]))
        if to == 'Syscall' and any('syscall.write' in s for s in st[:1]) and \
                any('finishRequest' in s or 'Flush' in s for s in st):
            if commits:  # a request that committed (not a warm-up's stray)
                out.append((cur, commits))
            cur, commits = collections.Counter(), []
    return out


def main():
    gs = parse(sys.argv[1])
    reqs = []
    for g in having(gs, 'conn).serve'):
        reqs += requests(gs[g])
    if not reqs:
        sys.exit('no HTTP request with a commit in the trace')
    syncs = wal_syncs(gs)
    starts = [s for s, _ in syncs]

    def split(c):
        """(before the fdatasync that ended the wait, of that in earlier fdatasyncs, it, after it)"""
        t0, t1 = c
        i = bisect.bisect_left(starts, t0)
        near = syncs[max(i - 1, 0):i + 16]
        inside = [s for s in near if t0 <= s[1] <= t1]
        if not inside:
            return (t1 - t0, 0, 0, 0)
        s0, s1 = inside[-1]
        earlier = sum(max(0, min(b, s0) - max(a, t0)) for a, b in near if b <= s0)
        return (max(s0 - t0, 0), earlier, s1 - max(s0, t0), t1 - s1)

    def total(r):
        return sum(v for k, v in r[0].items() if k != 'client')

    reqs.sort(key=total)
    n = len(reqs)
    kinds = sorted({k for r in reqs for k in r[0] if k != 'client'})
    groups = [('median', reqs[n // 2:n // 2 + 1]), ('p90', reqs[int(n * .9):int(n * .9) + 1]),
              ('p99', reqs[int(n * .99):int(n * .99) + 1]), ('slowest 1%', reqs[int(n * .99):]),
              ('all', reqs)]
    d = [b - a for a, b in syncs]
    d.sort()
    print('%d requests; WAL fdatasync: n=%d p50=%.2fms p90=%.2fms p99=%.2fms max=%.2fms' % (
        n, len(d), d[len(d) // 2] / 1e6, d[int(len(d) * .9)] / 1e6, d[int(len(d) * .99)] / 1e6, d[-1] / 1e6))
    print('%-12s %9s ' % ('request', 'total') + ' '.join('%14s' % (k.replace('wait: ', '') or '?')[:14] for k in kinds) +
          '   commit: before (in earlier syncs) / fdatasync / after')
    for name, rs in groups:
        m = len(rs)
        row = [sum(r[0][k] for r in rs) / m / 1e6 for k in kinds]
        sp = [split(c) for r in rs for c in r[1]]
        sm = [sum(x[i] for x in sp) / max(len(rs), 1) / 1e6 for i in range(4)]
        print('%-12s %7.2fms ' % (name, sum(total(r) for r in rs) / m / 1e6) +
              ' '.join('%12.2fms' % v for v in row) + '   %.2f (%.2f) / %.2f / %.2f ms' % tuple(sm))


if __name__ == '__main__':
    main()
