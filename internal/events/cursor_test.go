package events

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// recSink records the seqs of the batches it accepted; until failUntil it
// fails every write.
type recSink struct {
	name string

	mu        sync.Mutex
	seqs      []uint64
	bad       []string // events whose Type/MessageID disagree with their JSON
	failUntil time.Time
	fails     int
}

func (s *recSink) Name() string { return s.name }
func (s *recSink) Close() error { return nil }
func (s *recSink) Write(ctx context.Context, b []Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Now().Before(s.failUntil) {
		s.fails++
		return errors.New("sink down")
	}
	for _, e := range b {
		if e.MessageID != msgID(e.Seq) || e.Type != evType(e.Seq) {
			s.bad = append(s.bad, fmt.Sprintf("seq %d: %q %q", e.Seq, e.Type, e.MessageID))
		}
		if err := testutil.CheckEvent(e.JSON); err != nil {
			s.bad = append(s.bad, fmt.Sprintf("seq %d does not match docs/event.schema.json: %v", e.Seq, err))
		}
		s.seqs = append(s.seqs, e.Seq)
	}
	return nil
}

func (s *recSink) got() []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]uint64(nil), s.seqs...)
}

func (s *recSink) failing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return time.Now().Before(s.failUntil)
}

// checkExactly fails unless the sink received seqs from..to, each once,
// in order, with the right type and message id.
func (s *recSink) checkExactly(t *testing.T, from, to uint64) {
	t.Helper()
	got := s.got()
	if uint64(len(got)) != to-from+1 {
		t.Errorf("sink %s received %d events, want %d (seqs %d..%d)", s.name, len(got), to-from+1, from, to)
	}
	for i, q := range got {
		if q != from+uint64(i) {
			t.Errorf("sink %s: event %d has seq %d, want %d (gap, duplicate or reorder)", s.name, i, q, from+uint64(i))
			break
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.bad) > 0 {
		t.Errorf("sink %s: typed fields disagree with the JSON, or the JSON with the schema: %v", s.name, s.bad[:min(5, len(s.bad))])
	}
}

// Event n (its seq in a fresh spool, one event per commit) has a
// predictable type and message id (26 digits: a valid ULID).
func msgID(seq uint64) string { return fmt.Sprintf("%026d", seq) }
func evType(seq uint64) string {
	if seq%3 == 0 {
		return pipeline.EventBounced
	}
	return pipeline.EventDelivered
}

func commitEvent(t testing.TB, sp *spool.Spool, seq uint64) {
	b := sp.NewBatch()
	b.AddEvent(&pipeline.Event{Type: evType(seq), MessageID: msgID(seq), Attempt: int(seq), Source: pipeline.SourceSMTP})
	if err := b.Commit(false); err != nil {
		t.Error(err)
	}
}

func openSpool(t *testing.T, dir string) *spool.Spool {
	t.Helper()
	sp, err := spool.Open(filepath.Join(dir, "spool"), spool.Options{Node: "n"})
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

// hookRec records the attempts (= seqs) of the events the on_event hooks saw.
type hookRec struct {
	mu   sync.Mutex
	seen []uint64
}

func (h *hookRec) hook(ctx context.Context, ev *pipeline.Event) {
	h.mu.Lock()
	h.seen = append(h.seen, uint64(ev.Attempt))
	h.mu.Unlock()
}

func (h *hookRec) n() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.seen)
}

func (h *hookRec) check(t *testing.T, from, to uint64) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if uint64(len(h.seen)) != to-from+1 {
		t.Errorf("on_event saw %d events, want %d", len(h.seen), to-from+1)
	}
	for i, q := range h.seen {
		if q != from+uint64(i) {
			t.Errorf("on_event: event %d is %d, want %d", i, q, from+uint64(i))
			break
		}
	}
}

func TestFailingSinkDoesNotHoldBackOthers(t *testing.T) {
	testFailingSink(t, 2500*time.Millisecond)
}

// TestFailingSinkFor30s is the same with the sink down for 30 s (skipped
// with -short).
func TestFailingSinkFor30s(t *testing.T) {
	if testing.Short() {
		t.Skip("30 s")
	}
	t.Parallel()
	testFailingSink(t, 30*time.Second)
}

// testFailingSink runs two sinks and the on_event hooks while events keep
// being committed; one sink fails for failFor. The other sink and the
// hooks keep up, every consumer gets every event exactly once in order,
// the outbox is kept from the failing sink's cursor on and pruned once it
// caught up.
func testFailingSink(t *testing.T, failFor time.Duration) {
	dir := t.TempDir()
	sp := openSpool(t, dir)
	defer sp.Close()
	healthy := &recSink{name: "healthy"}
	flaky := &recSink{name: "flaky", failUntil: time.Now().Add(failFor)}
	hooks := &hookRec{}
	ex, err := NewExporter(sp, []Sink{healthy, flaky}, Options{OnEvent: hooks.hook, BatchSize: 64, RetryMax: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go ex.Run(ctx)

	// Commit events steadily until a while after the sink recovers.
	var committed atomic.Uint64
	stop := make(chan struct{})
	var stopOnce sync.Once
	committerDone := make(chan struct{})
	defer func() { // before the spool closes, also when the test fails
		stopOnce.Do(func() { close(stop) })
		<-committerDone
		cancel()
		<-ex.Done()
	}()
	go func() {
		defer close(committerDone)
		for seq := uint64(1); ; seq++ {
			select {
			case <-stop:
				return
			default:
			}
			commitEvent(t, sp, seq)
			committed.Store(seq)
			time.Sleep(time.Millisecond)
		}
	}()

	// While the flaky sink is down, the healthy sink and the hooks keep
	// up with what is committed, and the outbox keeps every event from
	// the flaky sink's cursor (1) on.
	const k = 100
	testutil.WaitForWithin(t, failFor, "the healthy sink and the hooks to take 100 events", func() bool {
		return len(healthy.got()) >= k && hooks.n() >= k
	})
	if !flaky.failing() {
		t.Fatalf("the machine is too slow for this test: the sink recovered before the others took %d events", k)
	}
	if n := len(flaky.got()); n != 0 {
		t.Fatalf("the failing sink accepted %d events", n)
	}
	testutil.WaitForWithin(t, 5*time.Second, "the healthy sink's cursor to be stored", func() bool {
		c, ok, _ := sp.Cursor("healthy")
		return ok && c > k
	})
	if c, ok, _ := sp.Cursor("flaky"); !ok || c != 1 {
		t.Fatalf("failing sink's cursor = %d (stored %v), want 1", c, ok)
	}
	if first, _ := sp.FirstOutboxSeq(); first != 1 {
		t.Fatalf("outbox pruned to %d while a sink is at 1", first)
	}
	if evs, _ := sp.ReadOutbox(1, 1<<20); len(evs) < k || evs[0].Seq != 1 {
		t.Fatalf("outbox holds %d events while a sink is at 1", len(evs))
	}

	// Let the sink recover while events keep coming, then stop.
	testutil.WaitForWithin(t, failFor+5*time.Second, "the failing sink to recover", func() bool { return len(flaky.got()) > 0 })
	time.Sleep(100 * time.Millisecond) // keep committing for a moment after recovery
	stopOnce.Do(func() { close(stop) })
	<-committerDone
	n := committed.Load()
	testutil.WaitForWithin(t, 15*time.Second, "every consumer to take every event", func() bool {
		return uint64(len(healthy.got())) >= n && uint64(len(flaky.got())) >= n && uint64(hooks.n()) >= n
	})
	testutil.WaitForWithin(t, 5*time.Second, "the outbox to be pruned", func() bool {
		first, _ := sp.FirstOutboxSeq()
		return first == n+1
	})
	cancel()
	<-ex.Done()
	healthy.checkExactly(t, 1, n)
	flaky.checkExactly(t, 1, n)
	hooks.check(t, 1, n)
	flaky.mu.Lock()
	fails := flaky.fails
	flaky.mu.Unlock()
	// Backoff from 100 ms, doubling to 1 s: about 7 tries in 2.5 s.
	if fails < 2 || fails > int(failFor/(100*time.Millisecond)) {
		t.Errorf("the failing sink was tried %d times in %v: no retry, or no backoff", fails, failFor)
	}
	t.Logf("%d events; failing sink tried %d times", n, fails)
}

// Cursors survive a restart: after reopening the spool each consumer
// resumes after what it took, a new consumer starts at the oldest event
// still in the outbox, and the cursor of a consumer no longer configured
// is deleted and holds nothing back.
func TestCursorsSurviveReopen(t *testing.T) {
	dir := t.TempDir()
	sp := openSpool(t, dir)
	a := &recSink{name: "a"}
	hooks := &hookRec{}
	run := func(sp *spool.Spool, sinks []Sink, want uint64) {
		t.Helper()
		ex, err := NewExporter(sp, sinks, Options{OnEvent: hooks.hook})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		go ex.Run(ctx)
		defer func() { cancel(); <-ex.Done() }()
		testutil.WaitForWithin(t, 10*time.Second, "the consumers to take every event", func() bool {
			for _, s := range sinks {
				if got := s.(*recSink).got(); len(got) == 0 || got[len(got)-1] < want {
					return false
				}
			}
			return uint64(hooks.n()) >= want
		})
	}
	for seq := uint64(1); seq <= 10; seq++ {
		commitEvent(t, sp, seq)
	}
	run(sp, []Sink{a}, 10)
	// A consumer configured before, no longer: its cursor is behind.
	if err := sp.SetCursor("gone", 3); err != nil {
		t.Fatal(err)
	}
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}

	sp = openSpool(t, dir)
	defer sp.Close()
	cur, err := sp.Cursors()
	if err != nil || cur["a"] != 11 || cur[OnEventConsumer] != 11 || cur["gone"] != 3 {
		t.Fatalf("cursors after reopen = %v, %v", cur, err)
	}
	for seq := uint64(11); seq <= 15; seq++ { // the seq continues above the cursors
		commitEvent(t, sp, seq)
	}
	if evs, _ := sp.ReadOutbox(0, 100); len(evs) != 5 || evs[0].Seq != 11 {
		t.Fatalf("outbox after reopen = %+v, want seqs 11..15", evs)
	}
	late := &recSink{name: "late"}
	run(sp, []Sink{a, late}, 15)
	a.checkExactly(t, 1, 15)
	late.checkExactly(t, 11, 15) // the oldest event left in the outbox
	hooks.check(t, 1, 15)
	cur, _ = sp.Cursors()
	if _, ok := cur["gone"]; ok || cur["late"] != 16 {
		t.Fatalf("cursors = %v: want late at 16 and gone deleted", cur)
	}
	if first, _ := sp.FirstOutboxSeq(); first != 16 {
		t.Fatalf("outbox pruned to %d, want 16 (a removed consumer holds nothing back)", first)
	}
}

// A slow on_event hook holds back neither the sinks nor acceptance.
func TestSlowOnEventDoesNotHoldBackSinks(t *testing.T) {
	sp := openSpool(t, t.TempDir())
	defer sp.Close()
	sink := &recSink{name: "s"}
	release := make(chan struct{})
	hooks := &hookRec{}
	ex, err := NewExporter(sp, []Sink{sink}, Options{OnEvent: func(ctx context.Context, ev *pipeline.Event) {
		<-release
		hooks.hook(ctx, ev)
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go ex.Run(ctx)
	defer func() { cancel(); <-ex.Done() }()
	var once sync.Once
	defer once.Do(func() { close(release) })
	const n = 500
	for seq := uint64(1); seq <= n; seq++ {
		commitEvent(t, sp, seq)
	}
	testutil.WaitForWithin(t, 30*time.Second, "the sink to take every event while the hook blocks", func() bool { return len(sink.got()) == n })
	if first, _ := sp.FirstOutboxSeq(); first != 1 {
		t.Fatalf("outbox pruned to %d while on_event has taken nothing", first)
	}
	once.Do(func() { close(release) })
	testutil.WaitForWithin(t, 10*time.Second, "the hooks to see every event", func() bool { return hooks.n() == n })
	cancel()
	<-ex.Done()
	sink.checkExactly(t, 1, n)
	hooks.check(t, 1, n)
}

func TestNewExporterRejectsDuplicateNames(t *testing.T) {
	sp := openSpool(t, t.TempDir())
	defer sp.Close()
	if _, err := NewExporter(sp, []Sink{&recSink{name: "x"}, &recSink{name: "x"}}, Options{}); err == nil {
		t.Fatal("two sinks named x accepted")
	}
	if _, err := NewExporter(sp, []Sink{&recSink{name: OnEventConsumer}}, Options{OnEvent: func(context.Context, *pipeline.Event) {}}); err == nil {
		t.Fatal("a sink named like the on_event consumer accepted")
	}
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if !json.Valid(sc.Bytes()) {
			t.Errorf("%s: invalid line %q", path, sc.Text())
		}
		out = append(out, sc.Text())
	}
	return out
}

func ev(seq uint64) Event {
	return Event{Seq: seq, Type: evType(seq), MessageID: msgID(seq), JSON: []byte(fmt.Sprintf(`{"seq":%d}`, seq))}
}

// After the file is moved away (log rotation), Reopen makes the next
// events go to a new file at the configured path.
func TestFileSinkReopenAfterRename(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "events.jsonl")
	fs, err := OpenFile(p)
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	ctx := context.Background()
	if err := fs.Write(ctx, []Event{ev(1), ev(2)}); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(p, p+".1"); err != nil {
		t.Fatal(err)
	}
	if err := fs.Write(ctx, []Event{ev(3)}); err != nil { // still the open, moved file
		t.Fatal(err)
	}
	if err := fs.Reopen(); err != nil {
		t.Fatal(err)
	}
	if err := fs.Write(ctx, []Event{ev(4), ev(5)}); err != nil {
		t.Fatal(err)
	}
	if got := readLines(t, p+".1"); fmt.Sprint(got) != `[{"seq":1} {"seq":2} {"seq":3}]` {
		t.Errorf("rotated file = %v", got)
	}
	if got := readLines(t, p); fmt.Sprint(got) != `[{"seq":4} {"seq":5}]` {
		t.Errorf("new file = %v", got)
	}
}

// Reopen is safe while another goroutine writes: no line is lost or torn.
func TestFileSinkReopenWhileWriting(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "events.jsonl")
	fs, err := OpenFile(p)
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	done := make(chan struct{})
	go func() {
		defer close(done)
		for seq := uint64(1); seq <= n; seq++ {
			if err := fs.Write(context.Background(), []Event{ev(seq)}); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	rotations := 0
	for ; ; rotations++ {
		select {
		case <-done:
		default:
			if err := os.Rename(p, fmt.Sprintf("%s.%d", p, rotations)); err != nil {
				t.Fatal(err)
			}
			if err := fs.Reopen(); err != nil {
				t.Fatal(err)
			}
			continue
		}
		break
	}
	fs.Close()
	total := len(readLines(t, p))
	for i := 0; i < rotations; i++ {
		total += len(readLines(t, fmt.Sprintf("%s.%d", p, i)))
	}
	if total != n {
		t.Fatalf("%d lines across %d rotations, want %d", total, rotations, n)
	}
}

// TestIdleOnEventConsumer: with no on_event hook (WantEvents false) the
// hooks consumer reads nothing and holds nothing back; once a hook exists
// (a reload added one), it sees the events from then on.
func TestIdleOnEventConsumer(t *testing.T) {
	sp := openSpool(t, t.TempDir())
	defer sp.Close()
	sink := &recSink{name: "s"}
	hooks := &hookRec{}
	var want atomic.Bool
	ex, err := NewExporter(sp, []Sink{sink}, Options{OnEvent: hooks.hook, WantEvents: want.Load})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go ex.Run(ctx)
	defer func() { cancel(); <-ex.Done() }()
	for seq := uint64(1); seq <= 100; seq++ {
		commitEvent(t, sp, seq)
	}
	testutil.WaitForWithin(t, 30*time.Second, "the sink to take every event", func() bool { return len(sink.got()) == 100 })
	testutil.WaitForWithin(t, 30*time.Second, "the outbox pruned past the idle hooks consumer", func() bool {
		first, _ := sp.FirstOutboxSeq()
		return first == 101
	})
	want.Store(true)
	for seq := uint64(101); seq <= 150; seq++ {
		commitEvent(t, sp, seq)
	}
	last := func() uint64 {
		hooks.mu.Lock()
		defer hooks.mu.Unlock()
		if len(hooks.seen) == 0 {
			return 0
		}
		return hooks.seen[len(hooks.seen)-1]
	}
	testutil.WaitForWithin(t, 10*time.Second, "the hooks to see the new events", func() bool { return last() == 150 })
	cancel()
	<-ex.Done()
	// The hooks saw a contiguous run ending at 150, none from before the
	// flip (one that raced the flip may be skipped: no hook was there).
	hooks.mu.Lock()
	first := hooks.seen[0]
	hooks.mu.Unlock()
	if first < 101 || first > 110 {
		t.Fatalf("hooks started at event %d", first)
	}
	hooks.check(t, first, 150)
	sink.checkExactly(t, 1, 150)
}
