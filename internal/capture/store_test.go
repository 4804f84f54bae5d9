package capture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

type recorder struct {
	mu  sync.Mutex
	evs []*pipeline.Event
}

func (r *recorder) record(evs []*pipeline.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evs = append(r.evs, evs...)
	return nil
}

func (r *recorder) events() []*pipeline.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*pipeline.Event(nil), r.evs...)
}

func open(t testing.TB, dir string, o Options) *Store {
	t.Helper()
	if o.Logger == nil {
		o.Logger = quiet()
	}
	s, err := Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func msg(subject, to, body string) []byte {
	return []byte("From: app@sender.test\r\nTo: " + to + "\r\nSubject: " + subject + "\r\n\r\n" + body + "\r\n")
}

func TestRetentionDropsOldestWithEvents(t *testing.T) {
	rec := &recorder{}
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	dir := filepath.Join(t.TempDir(), "sb")
	s := open(t, dir, Options{Retention: config.SandboxRetention{Messages: 3, Bytes: 1 << 20, Age: time.Hour}, Record: rec.record, Now: clock})
	var ids []string
	for i := 1; i <= 5; i++ {
		sm, err := s.Put("acme", fmt.Sprintf("msg%d", i), "app@sender.test", []string{"bob@dest.test"}, msg(fmt.Sprintf("m%d", i), "bob@dest.test", "x"))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, sm.ID)
	}
	// Another tenant's inbox is bounded on its own.
	if _, err := s.Put("other", "o1", "app@sender.test", []string{"bob@dest.test"}, msg("o", "bob@dest.test", "x")); err != nil {
		t.Fatal(err)
	}
	p, _ := s.Search("acme", Filter{}, 0, 10)
	if p.Total != 3 || p.Messages[0].Subject != "m5" || p.Messages[2].Subject != "m3" {
		t.Fatalf("after 5 puts: %+v", p.Messages)
	}
	evs := rec.events()
	if len(evs) != 2 || evs[0].Type != pipeline.EventSandboxDropped || evs[0].MessageID != "msg1" || evs[1].MessageID != "msg2" ||
		evs[0].Tenant != "acme" || !strings.Contains(evs[0].Response.Text, "more than 3 messages") {
		t.Fatalf("events: %+v", evs)
	}
	if _, ok, _ := s.Raw("acme", ids[0]); ok {
		t.Fatal("a dropped message is still readable")
	}
	// Age: an hour later everything goes, with an event each.
	now = now.Add(2 * time.Hour)
	s.enforce("")
	if p, _ := s.Search("acme", Filter{}, 0, 10); p.Total != 0 {
		t.Fatalf("after the age limit: %d", p.Total)
	}
	if n := len(rec.events()); n != 6 {
		t.Fatalf("%d events, want 6", n)
	}
	// Reopen: the index is rebuilt from disk.
	sm, _ := s.Put("acme", "m6", "app@sender.test", []string{"bob@dest.test"}, msg("m6", "bob@dest.test", "hello world"))
	s.Close()
	s = open(t, dir, Options{Now: clock})
	defer s.Close()
	got, ok := s.Get("acme", sm.ID)
	if !ok || got.Subject != "m6" {
		t.Fatalf("after reopen: %+v %v", got, ok)
	}
	if p, _ := s.Search("acme", Filter{Text: "WORLD"}, 0, 10); len(p.Messages) != 1 {
		t.Fatalf("text search after reopen: %+v", p)
	}
}

func TestBytesRetention(t *testing.T) {
	rec := &recorder{}
	s := open(t, t.TempDir(), Options{Retention: config.SandboxRetention{Bytes: 250}, Record: rec.record})
	defer s.Close()
	for i := 0; i < 4; i++ {
		if _, err := s.Put("t", "", "a@b.test", []string{"c@d.test"}, msg("s", "c@d.test", strings.Repeat("x", 60))); err != nil {
			t.Fatal(err)
		}
	}
	p, _ := s.Search("t", Filter{}, 0, 10)
	if p.Total != 2 || len(rec.events()) != 2 || !strings.Contains(rec.events()[0].Response.Text, "more than 250 bytes") {
		t.Fatalf("total %d, events %+v", p.Total, rec.events())
	}
}

func TestSimulatedReplies(t *testing.T) {
	s := open(t, t.TempDir(), Options{Simulate: []config.SimulateRule{
		{Match: "bounce@sim.test", Code: 550, Enhanced: "5.1.1", Text: "No such user"},
		{Match: "flaky+*@sim.test", Code: 452, Enhanced: "4.2.2", Text: "Mailbox full", Times: 2},
		{Match: "@slow.test", Delay: 50 * time.Millisecond},
		{Tenant: "other", Match: "@only-other.test", Code: 554},
	}})
	defer s.Close()
	c := &Conn{s: s, tenant: "acme"}
	env := &delivery.Envelope{From: "app@sender.test", MsgID: "m1", Rcpts: []delivery.Rcpt{
		{Addr: "Bounce@SIM.test", Attempt: 1}, {Addr: "flaky+7@sim.test", Attempt: 2}, {Addr: "flaky+7@sim.test", Attempt: 3},
		{Addr: "x@only-other.test", Attempt: 1}, {Addr: "y@slow.test", Attempt: 1}}}
	start := time.Now()
	res, err := c.Deliver(context.Background(), env, msg("hi", "x@y.test", "body"))
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) < 50*time.Millisecond {
		t.Error("the slow server answered at once")
	}
	var pe *pipeline.Error
	if !errors.As(res[0].Err, &pe) || pe.Code != 550 || pe.Enhanced != (pipeline.EnhancedCode{5, 1, 1}) || pipeline.IsTemporary(res[0].Err) {
		t.Fatalf("bounce: %+v", res[0])
	}
	var re *delivery.ReplyError
	if !errors.As(res[0].Err, &re) || re.Code != 550 {
		t.Fatalf("the bounce is not a remote reply: %v", res[0].Err)
	}
	if !pipeline.IsTemporary(res[1].Err) || res[1].Reply.Code != 452 {
		t.Fatalf("flaky attempt 2: %+v", res[1])
	}
	for _, i := range []int{2, 3, 4} {
		if res[i].Err != nil || res[i].Reply.Code != 250 || !strings.HasPrefix(res[i].Reply.Text, "captured as ") {
			t.Fatalf("rcpt %d: %+v", i, res[i])
		}
	}
	p, _ := s.Search("acme", Filter{}, 0, 10)
	if p.Total != 1 || len(p.Messages[0].Recipients) != 3 || p.Messages[0].MessageID != "m1" {
		t.Fatalf("captured: %+v", p.Messages)
	}
	// A dialer without a store defers capture routes.
	if _, err := (Dialer{}).Dial(context.Background(), pipeline.Capture("acme"), ""); !pipeline.IsTemporary(err) {
		t.Fatalf("no sandbox: %v", err)
	}
}

func TestWaitAndSubscribe(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ch, stop := s.Subscribe("acme", Filter{Subject: "news"}, 1)
	defer stop()
	got := make(chan *Summary, 1)
	go func() {
		sm, err := s.Wait(ctx, "acme", Filter{To: "carol@", Text: "CODE 12"})
		if err != nil {
			t.Error(err)
		}
		got <- sm
	}()
	for s.Waiters("acme") < 2 {
		time.Sleep(time.Millisecond)
	}
	mustPut := func(tenant, subject, to, body string) *Summary {
		sm, err := s.Put(tenant, "", "a@b.test", []string{to}, msg(subject, to, body))
		if err != nil {
			t.Fatal(err)
		}
		return sm
	}
	mustPut("other", "news", "carol@dest.test", "code 12") // another tenant
	mustPut("acme", "other", "carol@dest.test", "code 13") // text does not match
	want := mustPut("acme", "news", "carol@dest.test", "your code 12")
	if sm := <-got; sm.ID != want.ID {
		t.Fatalf("wait got %+v, want %s", sm, want.ID)
	}
	if sm := <-ch; sm.ID != want.ID {
		t.Fatalf("stream got %+v", sm)
	}
	// A subscriber that falls behind is closed (lagged), never blocks.
	mustPut("acme", "news 2", "carol@dest.test", "x")
	mustPut("acme", "news 3", "carol@dest.test", "x")
	<-ch
	if _, ok := <-ch; ok {
		t.Fatal("a lagging stream was not closed")
	}
	// A wait that times out.
	tctx, tcancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer tcancel()
	if _, err := s.Wait(tctx, "acme", Filter{To: "nobody@"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait for nothing: %v", err)
	}
	if n := s.Waiters("acme"); n != 1 { // the lagged subscriber until stop
		t.Fatalf("%d waiters left", n)
	}
}

func TestParse(t *testing.T) {
	p := Parse([]byte("Subject: =?utf-8?q?caf=C3=A9?=\r\nContent-Type: text/html; charset=iso-8859-1\r\n\r\n<p>caf\xe9</p>\r\n"))
	if p.Headers["Subject"][0] != "café" || !p.HasHTML || p.HasText || !strings.Contains(p.HTML, "café") {
		t.Fatalf("%+v", p)
	}
	if p := Parse([]byte("not a header line\x00")); p.Err == "" {
		t.Fatalf("garbage parsed without error: %+v", p)
	}
}

// benchWords is a vocabulary of 4,000 made-up words for realistic
// bodies; a message's prose draws from it with a skew (a few words are
// in most messages, most are rare).
var benchWords = func() []string {
	r := rand.New(rand.NewPCG(7, 7))
	syl := []string{"ka", "lo", "mi", "ne", "tur", "pra", "sel", "vo", "din", "ga", "re", "tho", "bu", "ser", "an", "el", "ost", "qui"}
	out := make([]string, 4000)
	for i := range out {
		var b strings.Builder
		for j := 0; j < 2+r.IntN(3); j++ {
			b.WriteString(syl[r.IntN(len(syl))])
		}
		out[i] = b.String()
	}
	return out
}()

// benchMessage is a transactional message of about 2 KB: a template
// (greeting, order lines, a link with a token, a footer) around a
// paragraph of prose, with per-message order number, name, code and
// link.
func benchMessage(r *rand.Rand, k int) (to string, data []byte) {
	to = fmt.Sprintf("user%d@dest.test", k)
	var b strings.Builder
	fmt.Fprintf(&b, "From: Shop <orders@shop.test>\r\nTo: %s\r\nSubject: Your order %d has shipped\r\nMessage-ID: <%d@shop.test>\r\n", to, k, k)
	fmt.Fprintf(&b, "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
	fmt.Fprintf(&b, "Hello customer%d,\r\n\r\nThank you for your order %d. Your confirmation code is K%06dQ.\r\n", k, k, r.IntN(1000000))
	fmt.Fprintf(&b, "Track it at https://shop.test/track/%016x?utm_source=mail\r\n\r\n", r.Uint64())
	for b.Len() < 1700 {
		// Zipf-like: low indexes are common words.
		w := benchWords[int(float64(len(benchWords))*r.Float64()*r.Float64()*r.Float64())]
		b.WriteString(w)
		if r.IntN(12) == 0 {
			b.WriteString(".\r\n")
		} else {
			b.WriteString(" ")
		}
	}
	b.WriteString("\r\n\r\nItems: 2 x widget, 1 x gadget. Total: 42.00 EUR.\r\n")
	b.WriteString("You receive this mail because you ordered at shop.test. Unsubscribe: https://shop.test/u\r\n")
	return to, []byte(b.String())
}

// BenchmarkSearch100k: searches over 100,000 captured messages of one
// tenant (about 2 KB of realistic text each, benchMessage), page of 50.
func BenchmarkSearch100k(b *testing.B) {
	dir := b.TempDir()
	s := open(b, dir, Options{Retention: config.SandboxRetention{}})
	const n = 100000
	var wg sync.WaitGroup
	per := n / 20
	for w := 0; w < 20; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for i := 0; i < per; i++ {
				k := w*per + i
				to, data := benchMessage(r, k)
				if _, err := s.Put("acme", "", "orders@shop.test", []string{to}, data); err != nil {
					b.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	// The word index's size, and the time to rebuild it at Open.
	s.mu.RLock()
	wi := s.tenants["acme"].words
	pb := 0
	for _, p := range wi.lists {
		pb += cap(p.data)
	}
	s.mu.RUnlock()
	var m1 runtime.MemStats
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	t0, c0 := time.Now(), processCPU()
	s = open(b, dir, Options{Retention: config.SandboxRetention{}})
	defer s.Close()
	reopen, reopenCPU := time.Since(t0), processCPU()-c0
	runtime.GC()
	runtime.ReadMemStats(&m1)
	b.Logf("word index: %d words, %d postings, %.1f MiB of posting lists; heap with the store open %.1f MiB; reopen (summaries and word index rebuilt) %v, %v of CPU",
		len(wi.lists), wi.postings, float64(pb)/(1<<20), float64(m1.HeapAlloc)/(1<<20), reopen, reopenCPU)
	for _, c := range []struct {
		name  string
		f     Filter
		start int
	}{
		{"to", Filter{To: "user77777@dest.test"}, 0},
		{"subject-none", Filter{Subject: "no such subject"}, 0},
		{"text-word-many", Filter{Text: "thank"}, 0},
		{"text-word-many-page100", Filter{Text: "thank"}, 5000},
		{"text-word-one", Filter{Text: "customer77777"}, 0},
		{"text-word-none", Filter{Text: "nosuchword"}, 0},
		{"text-fragment-many", Filter{Text: "rde"}, 0},
		{"text-letter", Filter{Text: "e"}, 0},
		{"text-words-many", Filter{Text: "your order"}, 0},
		{"text-words-one", Filter{Text: "order 77777"}, 0},
		{"text-words-none", Filter{Text: "no such words"}, 0},
		{"text-phrase-many", Filter{Text: `"your order"`}, 0},
		{"text-phrase-one", Filter{Text: `"order 77777."`}, 0},
		{"text-phrase-none", Filter{Text: `"no such words"`}, 0},
		{"text-phrase-common-never-adjacent", Filter{Text: `"widget thank"`}, 0},
		{"multi-to-text", Filter{To: "user77777@dest.test", Text: "shipped"}, 0},
		{"multi-subject-text", Filter{Subject: "order 7777", Text: `"confirmation code"`}, 0},
		{"multi-from-text-none", Filter{From: "orders@", Text: "nosuchword"}, 0},
	} {
		b.Run(c.name, func(b *testing.B) {
			c0 := processCPU()
			for i := 0; i < b.N; i++ {
				if _, err := s.Search("acme", c.f, c.start, 50); err != nil {
					b.Fatal(err)
				}
			}
			// On a loaded machine the wall time per search includes
			// waiting for a core; the process's CPU per search does not.
			b.ReportMetric(float64(processCPU()-c0)/float64(b.N), "cpu-ns/op")
		})
	}
	// The heap the word index holds: the heap with it, less without.
	s.mu.Lock()
	words := s.tenants["acme"].words
	s.tenants["acme"].words = wordIndex{}
	s.mu.Unlock()
	runtime.GC()
	var m2 runtime.MemStats
	runtime.ReadMemStats(&m2)
	b.Logf("heap held by the word index: %.1f MiB (%d words)", float64(int64(m1.HeapAlloc)-int64(m2.HeapAlloc))/(1<<20), len(words.lists))
}

// BenchmarkWaiters1000 reports the memory 1,000 concurrent Wait calls
// hold (goroutine stacks included), per wait and in total.
func BenchmarkWaiters1000(b *testing.B) {
	s := open(b, b.TempDir(), Options{})
	defer s.Close()
	for i := 0; i < b.N; i++ {
		testutil.ReportHeldWaits(b, 1000, func(ctx context.Context, j int) {
			_, _ = s.Wait(ctx, "acme", Filter{To: fmt.Sprintf("user%d@", j), Subject: "welcome"})
		}, func() bool { return s.Waiters("acme") == 1000 })
	}
}

// BenchmarkPut: captures of a small plain message from GOMAXPROCS
// goroutines, with the log synced per commit group (SyncLag negative)
// and lagged (the default). BenchmarkCaptureSteps splits one capture
// into its steps.
func BenchmarkPut(b *testing.B) {
	for _, c := range []struct {
		name string
		lag  time.Duration
	}{{"synced", -1}, {"lagged", 0}} {
		b.Run(c.name, func(b *testing.B) {
			s := open(b, b.TempDir(), Options{Retention: config.SandboxRetention{}, SyncLag: c.lag})
			defer s.Close()
			data := msg("order 1", "bob@dest.test", strings.Repeat("lorem ipsum dolor sit amet consectetur ", 50))
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			c0 := processCPU()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := s.Put("acme", "", "app@sender.test", []string{"bob@dest.test"}, data); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.ReportMetric(float64(processCPU()-c0)/float64(b.N), "cpu-ns/op")
		})
	}
}

func TestAutoReplyAndComplaint(t *testing.T) {
	complained := make(chan string, 1)
	s := open(t, t.TempDir(), Options{Simulate: []config.SimulateRule{
		{Match: "ooo@sim.test", AutoReply: "Away until Monday."},
		{Match: "angry@sim.test", Complaint: true},
	}, Complain: func(msgID, rcpt string) { complained <- msgID + " " + rcpt }})
	c := &Conn{s: s, tenant: "acme"}
	env := &delivery.Envelope{From: "app@sender.test", MsgID: "m1", Rcpts: []delivery.Rcpt{{Addr: "ooo@sim.test", Attempt: 1}, {Addr: "angry@sim.test", Attempt: 1}}}
	res, err := c.Deliver(context.Background(), env, []byte("Message-ID: <x1@sender.test>\r\nSubject: Lunch\r\n\r\nhi\r\n"))
	if err != nil || res[0].Err != nil || res[1].Err != nil {
		t.Fatalf("%+v %v", res, err)
	}
	p, _ := s.Search("acme", Filter{To: "app@sender.test"}, 0, 10)
	if p.Total != 1 || p.Messages[0].Subject != "Automatic reply: Lunch" || p.Messages[0].Sender != "" {
		t.Fatalf("auto-reply: %+v", p.Messages)
	}
	raw, _, _ := s.Raw("acme", p.Messages[0].ID)
	if !strings.Contains(string(raw), "In-Reply-To: <x1@sender.test>") || !strings.Contains(string(raw), "Away until Monday.") {
		t.Fatalf("auto-reply bytes: %s", raw)
	}
	if got := <-complained; got != "m1 angry@sim.test" {
		t.Fatalf("complaint: %q", got)
	}
	s.Close()
}

// A message larger than retention.bytes by itself is dropped alone: the
// smaller, older messages it could never make room for stay in the inbox.
func TestBytesRetentionOversizedMessageDropsOnlyItself(t *testing.T) {
	rec := &recorder{}
	s := open(t, t.TempDir(), Options{Retention: config.SandboxRetention{Bytes: 250}, Record: rec.record})
	defer s.Close()
	for _, body := range []string{strings.Repeat("x", 20), strings.Repeat("y", 20), strings.Repeat("z", 400)} {
		if _, err := s.Put("t", "", "a@b.test", []string{"c@d.test"}, msg("s", "c@d.test", body)); err != nil {
			t.Fatal(err)
		}
	}
	p, _ := s.Search("t", Filter{}, 0, 10)
	if p.Total != 2 || len(rec.events()) != 1 {
		t.Fatalf("total %d (want the 2 small messages kept), events %+v", p.Total, rec.events())
	}
}
