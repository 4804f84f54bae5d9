package queue

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// spoolQueued writes n deferred recipients into sp as a relay leaves them
// after a failed attempt to a destination that is down: messages of one
// to three recipients (every fifth has more than one), spread over dests
// relay destinations and as many recipient domains, each with its own
// route, reply and next attempt (in one to two hours) as decoded from
// the spool. It returns the message ids with their recipient counts.
func spoolQueued(tb testing.TB, sp *spool.Spool, n, dests int) map[string]int {
	tb.Helper()
	now := time.Now()
	want := map[string]int{}
	b := sp.NewBatch()
	for i := 0; i < n; {
		m := &spool.Meta{ID: sp.NewID(), Sender: "bulk@sender.test", Source: "smtp", Received: now, Size: 1024}
		_ = b.PutMessage(m, []byte("Subject: x\r\n\r\nbody\r\n"))
		k := 1
		if i%5 == 0 {
			k = 1 + i%3
		}
		for j := 0; j < k && i < n; j, i = j+1, i+1 {
			d := i % dests
			dom := fmt.Sprintf("d%d.test", d)
			_ = b.PutRecipient(&spool.Recipient{MsgID: m.ID, Idx: j, Address: fmt.Sprintf("user%d@%s", i, dom), Domain: dom,
				Route:    &pipeline.Route{Kind: pipeline.RouteRelay, Host: fmt.Sprintf("10.0.%d.%d", d/250, d%250), Port: 2602, TLS: "none"},
				Attempts: 1, NextAttempt: now.Add(time.Hour + time.Duration(i%3600)*time.Second),
				LastReply: &pipeline.Response{Code: 451, Enhanced: "4.4.1", Text: "dial tcp 10.0.0.1:2602: connect: connection refused"}})
			want[m.ID]++
		}
		if len(want)%2000 == 0 {
			if err := b.Commit(false); err != nil {
				tb.Fatal(err)
			}
			b = sp.NewBatch()
		}
	}
	if err := b.Commit(true); err != nil {
		tb.Fatal(err)
	}
	return want
}

// indexed counts the recipients the queue holds per message id: in the
// timer heap and in every destination's ready list.
func indexed(q *Queue) (map[string]int, map[string]bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	got := map[string]int{}
	seen := map[string]bool{}
	add := func(it *item) {
		idxs := it.indexes()
		if it.loaded != nil {
			idxs = nil
			for _, r := range it.rcpts {
				idxs = append(idxs, uint16(r.Idx))
			}
		}
		for _, idx := range idxs {
			got[it.id]++
			seen[fmt.Sprintf("%s/%d", it.id, idx)] = true
		}
	}
	for i := range q.waiting {
		add(q.view(&q.waiting[i]))
	}
	for _, d := range q.dests {
		for _, it := range d.ready {
			add(it)
		}
	}
	return got, seen
}

// TestLoadRebuildsEveryQueuedRecipient: a restart with 20,000 recipients
// queued (issue 21's million, at CI size) puts every one of them back,
// once, under its own message and destination.
func TestLoadRebuildsEveryQueuedRecipient(t *testing.T) {
	const n, dests = 20_000, 300
	sp, err := spool.Open(t.TempDir(), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	want := spoolQueued(t, sp, n, dests)

	q := New(sp, &fakeDialer{}, Options{Logger: slog.New(slog.DiscardHandler)})
	got, err := q.Load()
	if err != nil || got != n {
		t.Fatalf("Load = %d, %v; want %d recipients", got, err, n)
	}
	byMsg, seen := indexed(q)
	if len(seen) != n {
		t.Errorf("%d distinct recipients indexed, want %d", len(seen), n)
	}
	// Waiting items are compact: the spool keeps their metadata and
	// recipients; the queue keeps indexes.
	if n, ok := waitingCompact(q); n == 0 || !ok {
		t.Fatalf("%d waiting records, all with recipients of a queued message: %v", n, ok)
	}
	if len(byMsg) != len(want) {
		t.Errorf("%d messages indexed, want %d", len(byMsg), len(want))
	}
	for id, k := range want {
		if byMsg[id] != k {
			t.Fatalf("message %s: %d recipients indexed, want %d", id, byMsg[id], k)
		}
	}
	if s := q.Stats(); s.Messages != len(want) || s.Waiting == 0 || s.Ready != 0 {
		t.Errorf("stats %+v, want %d messages all waiting", s, len(want))
	}
	total := 0
	qs := q.Queues()
	for _, qi := range qs {
		total += qi.Waiting + qi.Ready
		if qi.LastError == nil || qi.LastError.Code != 451 || qi.NextAttempt == nil {
			t.Fatalf("queue %+v: want its last error and next attempt", qi)
		}
	}
	if total != n || len(qs) != dests {
		t.Errorf("queue listing: %d recipients in %d queues, want %d in %d", total, len(qs), n, dests)
	}
}

// cpuTime is the CPU time (user and system) the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportGCCPU forces cycles collections and reports the CPU of the whole
// process per collection per recipient of n ("gc-cpu-ns/rcpt").
func reportGCCPU(b *testing.B, n, cycles int) {
	cpu0 := cpuTime()
	for range cycles {
		runtime.GC()
	}
	cpu := cpuTime() - cpu0
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(cycles)/float64(n), "gc-cpu-ns/rcpt")
}

// BenchmarkQueuedMemory reports the Go heap the queue's index takes per
// queued recipient after a restart (Load) with n recipients deferred for
// one destination that is down ("B/rcpt": live heap after a GC, the
// spool's own caches excluded by measuring the spool open before Load),
// and the wall and CPU time of Load per recipient ("ns-load/rcpt",
// "cpu-ns-load/rcpt": CPU of the whole process, Pebble's goroutines too;
// the wall time depends on the machine's load, the CPU time much less).
//
//	go test -run '^$' -bench QueuedMemory -benchtime 1x ./internal/queue
func BenchmarkQueuedMemory(b *testing.B) {
	for _, tc := range []struct{ n, dests int }{{100_000, 1}, {100_000, 10_000}} {
		b.Run(fmt.Sprintf("n=%d/dests=%d", tc.n, tc.dests), func(b *testing.B) {
			dir := b.TempDir()
			sp, err := spool.Open(dir, spool.Options{})
			if err != nil {
				b.Fatal(err)
			}
			spoolQueued(b, sp, tc.n, tc.dests)
			// Reopen, as a restart does: the memtable's flushes are then
			// over before the heap is measured.
			if err := sp.Close(); err != nil {
				b.Fatal(err)
			}
			if sp, err = spool.Open(dir, spool.Options{}); err != nil {
				b.Fatal(err)
			}
			defer sp.Close()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				q := New(sp, &fakeDialer{}, Options{Logger: slog.New(slog.DiscardHandler)})
				start, cpu0 := time.Now(), cpuTime()
				if got, err := q.Load(); err != nil || got != tc.n {
					b.Fatalf("Load = %d, %v", got, err)
				}
				load, cpu := time.Since(start), cpuTime()-cpu0
				runtime.GC()
				runtime.ReadMemStats(&after)
				b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(tc.n), "B/rcpt")
				b.ReportMetric(float64(load.Nanoseconds())/float64(tc.n), "ns-load/rcpt")
				b.ReportMetric(float64(cpu.Nanoseconds())/float64(tc.n), "cpu-ns-load/rcpt")
				runtime.KeepAlive(q)
			}
		})
	}
}

// BenchmarkQueuedMemoryLive is BenchmarkQueuedMemory on the live path:
// n messages accepted (committed, then Enqueue as the relay does) for a
// destination that refuses connections, measured once each has had its
// failed attempt and waits in the timer heap.
//
//	go test -run '^$' -bench QueuedMemoryLive -benchtime 1x ./internal/queue
func BenchmarkQueuedMemoryLive(b *testing.B) {
	const n = 100_000
	for i := 0; i < b.N; i++ {
		sp, err := spool.Open(b.TempDir(), spool.Options{})
		if err != nil {
			b.Fatal(err)
		}
		down := &pipeline.Error{Code: 421, Enhanced: pipeline.EnhancedCode{4, 4, 1}, Message: "connect: connection refused"}
		q := New(sp, &fakeDialer{dialErr: down}, Options{Logger: slog.New(slog.DiscardHandler), RetryInitial: time.Hour, RetryMax: time.Hour})
		q.Start()
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		now := time.Now()
		for j := 0; j < n; j++ {
			m := &spool.Meta{ID: sp.NewID(), Sender: fmt.Sprintf("bulk%d@sender.test", j%10), Source: "smtp", Received: now, Size: 1024}
			r := &spool.Recipient{MsgID: m.ID, Address: fmt.Sprintf("user%d@sink.test", j), Domain: "sink.test",
				Route: &pipeline.Route{Kind: pipeline.RouteRelay, Host: "127.0.0.1", Port: 2602, TLS: "none"}}
			bt := sp.NewBatch()
			_ = bt.PutMessage(m, []byte("Subject: x\r\n\r\nbody\r\n"))
			_ = bt.PutRecipient(r)
			if err := bt.Commit(false); err != nil {
				b.Fatal(err)
			}
			q.Enqueue(m, []*spool.Recipient{r})
		}
		for q.Stats().Waiting < n {
			time.Sleep(50 * time.Millisecond)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "B/rcpt")
		if f := os.Getenv("QUEUED_HEAP_PROFILE"); f != "" { // what the heap holds now
			w, _ := os.Create(f)
			_ = pprof.WriteHeapProfile(w)
			w.Close()
		}
		q.Stop(context.Background())
		sp.Close()
	}
}

// TestManyDestinationsFewConnections: with more destinations than
// connection slots, a worker whose destination has nothing left gives its
// slot up to a destination waiting for one instead of idling IdleTimeout
// (here an hour) on it, and no destination gets a worker per message
// while every slot is taken. Without that, 30 destinations over 2 slots
// stalled after the first two (issue 21's 10,000 destinations drained at
// about 60 messages/s).
func TestManyDestinationsFewConnections(t *testing.T) {
	const dests, per = 30, 3
	sp, err := spool.Open(t.TempDir(), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	fd := &fakeDialer{}
	q := newQueue(sp, fd, fakeBouncer{}, Options{MaxConnections: 2, MaxPerDestination: 5, IdleTimeout: time.Hour})
	q.Start()
	defer q.Stop(context.Background())
	peakWorkers := 0
	for d := 0; d < dests; d++ {
		for i := 0; i < per; i++ {
			m, rs := put(t, sp, "s@a.test", fmt.Sprintf("r%d@d%d.test", i, d))
			q.Enqueue(m, rs)
			peakWorkers = max(peakWorkers, q.Stats().Active)
		}
	}
	testutil.WaitFor(t, "every message delivered", func() bool {
		peakWorkers = max(peakWorkers, q.Stats().Active)
		return q.Stats().Messages == 0
	})
	fd.mu.Lock()
	defer fd.mu.Unlock()
	if len(fd.sent) != dests*per || fd.maxConns > 2 {
		t.Errorf("delivered %d of %d, %d connections at once (limit 2)", len(fd.sent), dests*per, fd.maxConns)
	}
	// One worker per destination at the most while the slots are taken
	// (a destination's first worker may still be starting when the next
	// message for it comes), plus the two holding slots.
	if peakWorkers > dests+2 {
		t.Errorf("%d workers at once for %d destinations over 2 slots", peakWorkers, dests)
	}
}
