#!/usr/bin/env python3
"""traceanat: where a lone SMTP session's wall time goes, from a Go execution trace.

usage:
  sluice serve -trace /tmp/t.out ...      (e.g. SERVE_FLAGS="-trace /tmp/t.out" with
                                           examples/bench/onesession.sh or run.sh)
  go tool trace -d=parsed /tmp/t.out > /tmp/t.txt
  examples/bench/traceanat.py /tmp/t.txt

It takes the SMTP session goroutine with the most state transitions (the measured
session; go-smtp's Conn.handle in its stack) and prints, per message (one commit
wait each):
  * the time the session spent in each state (running, runnable: waiting for a CPU,
    in system calls, waiting), and the waits by kind: its commits (Spool.write), the
    client's turns (network reads), others;
  * the write-ahead log's fdatasync calls (Pebble's LogWriter.flushLoop goroutines)
    made while that session ran: count, mean, median and 90th percentile;
  * each commit wait split into: before the fdatasync that ended it started (the hand-
    off to the writer goroutine, Pebble's commit pipeline, the WAL write), the fdatasync
    itself, and after it (the wake-ups back to the session).
Times are wall times under tracing (which slows the process somewhat); medians say
more than means on a shared machine, where the disk's and the CPU queue's tails are
other processes'.
"""
import bisect
import collections
import re
import sys

EV = re.compile(r'^M=(-?\d+) P=(-?\d+) G=(-?\d+) StateTransition Time=(\d+) GoID=(\d+) (\w+)->(\w+) Reason="([^"]*)"')


def parse(path):
    """goroutine id -> [(time ns, from, to, reason, transition stack frames)]"""
    gs = collections.defaultdict(list)
    cur, stack, in_stack = None, [], False

    def flush():
        if cur is not None:
            gs[cur[1]].append((cur[0], cur[2], cur[3], cur[4], stack[:]))

    with open(path) as f:
        for line in f:
            if line.startswith('M='):
                flush()
                stack, in_stack = [], False
                m = EV.match(line)
                cur = (int(m.group(4)), int(m.group(5)), m.group(6), m.group(7), m.group(8)) if m else None
            elif line.startswith('TransitionStack='):
                in_stack = True
            elif line.startswith('Stack='):
                in_stack = False
            elif in_stack and cur is not None and line.startswith('\t') and not line.startswith('\t\t'):
                stack.append(line.strip().split(' @ ')[0])
    flush()
    return gs


def having(gs, frame):
    return [g for g, evs in gs.items() if any(any(frame in s for s in e[4]) for e in evs)]


def wal_syncs(gs):
    """The write-ahead log's fdatasync calls (Pebble's LogWriter.flushLoop), [(start, end)] sorted."""
    syncs = []
    for g in having(gs, 'flushLoop'):
        e = gs[g]
        for (t, _, to, _, st), nxt in zip(e, e[1:]):
            if to == 'Syscall' and any('Fdatasync' in s for s in st):
                syncs.append((t, nxt[0]))
    return sorted(syncs)


def stats(v):
    if not v:
        return 'n=0'
    v = sorted(v)
    return 'n=%d mean=%.0fus p50=%.0fus p90=%.0fus' % (
        len(v), sum(v) / len(v) / 1e3, v[len(v) // 2] / 1e3, v[int(len(v) * .9)] / 1e3)


def main():
    gs = parse(sys.argv[1])
    sessions = having(gs, 'go-smtp.(*Conn).handle')
    if not sessions:
        sys.exit('no SMTP session goroutine in the trace')
    evs = gs[max(sessions, key=lambda g: len(gs[g]))]

    state, waits, commits = collections.Counter(), collections.Counter(), []
    for (t, _, to, reason, st), nxt in zip(evs, evs[1:]):
        d = nxt[0] - t
        state[to] += d
        if to == 'Waiting':
            if any('Spool).write' in s for s in st):
                waits['commit (Spool.write)'] += d
                commits.append((t, nxt[0]))
            elif reason == 'network':
                waits["client's turn (network read)"] += d
            else:
                waits['other: ' + reason] += d
    n = max(len(commits), 1)
    print('session: %d messages (commit waits)' % len(commits))
    for k, v in state.most_common():
        print('  %-10s %6.0f us/msg' % (k, v / 1e3 / n))
    for k, v in waits.most_common():
        print('    waiting: %-32s %6.0f us/msg' % (k, v / 1e3 / n))

    # Only the syncs while the session ran (not a warm-up's before it).
    syncs = [s for s in wal_syncs(gs) if evs[0][0] <= s[0] <= evs[-1][0]]
    print('WAL fdatasync while the session ran: ' + stats([b - a for a, b in syncs]))

    starts = [s for s, _ in syncs]
    before, during, after = [], [], []
    for t0, t1 in commits:
        i = bisect.bisect_left(starts, t0)
        inside = [s for s in syncs[i:i + 8] if s[1] <= t1]
        if inside:
            s0, s1 = inside[-1]
            before.append(s0 - t0)
            during.append(s1 - s0)
            after.append(t1 - s1)
    print('commit wait, split at the fdatasync that ended it:')
    print('  before it:  ' + stats(before))
    print('  fdatasync:  ' + stats(during))
    print('  after it:   ' + stats(after))


if __name__ == '__main__':
    main()
