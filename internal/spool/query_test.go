package spool

import (
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/sluice-mta/sluice/pipeline"
)

// qmsg describes a message to store for a query test.
type qmsg struct {
	id       string // "" = s.NewID()
	at       time.Time
	sender   string
	tenant   string
	rcpts    []string // addresses; "relay:" prefix routes to smarthost.test
	attempts []int    // per recipient; > 0 = deferred that many times
}

var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

func idAtTime(t time.Time) string {
	return ulid.MustNew(ulid.Timestamp(t), rand.Reader).String()
}

// store accepts m as the relay would (message, recipients, received
// events), then defers the recipients with attempts as the queue would.
func store(t testing.TB, s *Spool, m qmsg) string {
	t.Helper()
	if m.id == "" {
		m.id = s.NewID()
	}
	if m.at.IsZero() {
		m.at = time.Now().UTC()
	}
	meta := &Meta{ID: m.id, Source: "http", Sender: m.sender, Tenant: m.tenant, Tags: []string{"t"},
		Meta: map[string]string{"k": "v"}, Received: m.at, Size: 5}
	b := s.NewBatch()
	if err := b.PutMessage(meta, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	var rs []*Recipient
	for i, a := range m.rcpts {
		route := pipeline.MX()
		if strings.HasPrefix(a, "relay:") {
			a = strings.TrimPrefix(a, "relay:")
			route = &pipeline.Route{Kind: pipeline.RouteRelay, Host: "smarthost.test", Port: 587}
		}
		_, d, _ := pipeline.SplitAddress(a)
		r := &Recipient{MsgID: m.id, Idx: i, Address: a, Domain: d, Route: route}
		rs = append(rs, r)
		if err := b.PutRecipient(r); err != nil {
			t.Fatal(err)
		}
		b.AddEvent(&pipeline.Event{Type: pipeline.EventReceived, MessageID: m.id, Recipient: a, Sender: m.sender,
			Tenant: m.tenant, Source: "http", Queue: route.QueueName(d), Tags: []string{"t"}, Size: 5})
	}
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	for i, n := range m.attempts {
		for a := 1; a <= n; a++ {
			defer_(t, s, meta, rs[i], &pipeline.Response{Code: 451, Enhanced: "4.4.1", Text: fmt.Sprintf("try %d", a)})
		}
	}
	return m.id
}

// defer_ records a temporary failure as the queue does.
func defer_(t testing.TB, s *Spool, m *Meta, r *Recipient, resp *pipeline.Response) {
	t.Helper()
	r.Attempts++
	r.NextAttempt = time.Now().Add(time.Duration(r.Attempts) * time.Minute).UTC().Truncate(time.Millisecond)
	r.LastReply = resp
	b := s.NewBatch()
	if err := b.PutRecipient(r); err != nil {
		t.Fatal(err)
	}
	b.AddEvent(&pipeline.Event{Type: pipeline.EventDeferred, MessageID: m.ID, Recipient: r.Address, Sender: m.Sender,
		Tenant: m.Tenant, Queue: queueOf(r), Attempt: r.Attempts, Response: resp})
	if err := b.Commit(false); err != nil {
		t.Fatal(err)
	}
}

// finish records a final outcome as the queue does; last deletes the message.
func finish(t testing.TB, s *Spool, id string, idx int, addr, typ string, attempt int, resp *pipeline.Response, last bool) {
	t.Helper()
	b := s.NewBatch()
	b.DeleteRecipient(id, idx)
	_, d, _ := pipeline.SplitAddress(addr)
	b.AddEvent(&pipeline.Event{Type: typ, MessageID: id, Recipient: addr, Sender: "app@example.com", Tenant: "acme",
		Source: "http", Queue: d, Attempt: attempt, Response: resp})
	if last {
		b.DeleteMessage(id)
	}
	if err := b.Commit(false); err != nil {
		t.Fatal(err)
	}
}

func TestStatus(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	id := store(t, s, qmsg{sender: "app@example.com", tenant: "acme",
		rcpts:    []string{"q@a.test", "d@b.test", "ok@c.test", "no@d.test", "relay:r@e.test"},
		attempts: []int{0, 2, 0, 0, 0}})
	ok := &pipeline.Response{Code: 250, Enhanced: "2.0.0", Text: "OK"}
	bad := &pipeline.Response{Code: 550, Enhanced: "5.1.1", Text: "no such user"}
	finish(t, s, id, 2, "ok@c.test", pipeline.EventDelivered, 1, ok, false)
	finish(t, s, id, 3, "no@d.test", pipeline.EventBounced, 1, bad, false)

	st, err := s.Status(id)
	if err != nil {
		t.Fatal(err)
	}
	if st.ID != id || st.Sender != "app@example.com" || st.Tenant != "acme" || st.Source != "http" || !st.InSpool ||
		st.Size != 5 || st.Received.IsZero() || st.Metadata["k"] != "v" || len(st.Tags) != 1 {
		t.Fatalf("metadata %+v", st)
	}
	// 5 received, 2 deferred, 1 delivered, 1 bounced.
	if len(st.Events) != 9 {
		t.Fatalf("%d events", len(st.Events))
	}
	type want struct {
		addr, state, queue string
		attempts           int
		next               bool
		code               int
	}
	wants := []want{
		{"q@a.test", StateQueued, "a.test", 0, true, 0},
		{"d@b.test", StateDeferred, "b.test", 2, true, 451},
		{"ok@c.test", StateDelivered, "c.test", 1, false, 250},
		{"no@d.test", StateBounced, "d.test", 1, false, 550},
		{"r@e.test", StateQueued, "relay:smarthost.test:587", 0, true, 0},
	}
	if len(st.Recipients) != len(wants) {
		t.Fatalf("recipients %+v", st.Recipients)
	}
	for i, w := range wants {
		r := st.Recipients[i]
		code := 0
		if r.LastResponse != nil {
			code = r.LastResponse.Code
		}
		if r.Address != w.addr || r.State != w.state || r.Queue != w.queue || r.Attempts != w.attempts || code != w.code ||
			r.Updated.IsZero() {
			t.Errorf("recipient %d = %+v, want %+v", i, r, w)
		}
		// Live recipients say when they are next tried (a never-attempted
		// one: zero, i.e. now); final ones never do.
		if !w.next && !r.NextAttempt.IsZero() || w.state == StateDeferred && r.NextAttempt.IsZero() {
			t.Errorf("recipient %d next attempt %v", i, r.NextAttempt)
		}
	}
	if r := st.Recipients[1]; r.LastResponse.Text != "try 2" {
		t.Errorf("deferred last response %+v", r.LastResponse)
	}

	// All final: the message leaves the spool, its status stays (from
	// the history).
	finish(t, s, id, 0, "q@a.test", pipeline.EventDelivered, 1, ok, false)
	finish(t, s, id, 1, "d@b.test", pipeline.EventExpired, 3, &pipeline.Response{Code: 451, Text: "down"}, false)
	finish(t, s, id, 4, "r@e.test", pipeline.EventDelivered, 1, ok, true)
	st, err = s.Status(id)
	if err != nil {
		t.Fatal(err)
	}
	if st.InSpool || st.Sender != "app@example.com" || st.Tenant != "acme" || st.Received.IsZero() {
		t.Fatalf("after leaving the spool: %+v", st)
	}
	got := map[string]string{}
	for _, r := range st.Recipients {
		got[r.Address] = fmt.Sprintf("%s/%d/%v", r.State, r.Attempts, r.NextAttempt.IsZero())
	}
	wantFinal := map[string]string{"q@a.test": "delivered/1/true", "d@b.test": "expired/3/true",
		"ok@c.test": "delivered/1/true", "no@d.test": "bounced/1/true", "r@e.test": "delivered/1/true"}
	if fmt.Sprint(got) != fmt.Sprint(wantFinal) {
		t.Fatalf("final states %v, want %v", got, wantFinal)
	}

	// A refused message is never stored: only its rejected events exist.
	rid := s.NewID()
	b := s.NewBatch()
	b.AddEvent(&pipeline.Event{Type: pipeline.EventRejected, MessageID: rid, Recipient: "x@y.test", Tenant: "other",
		Response: &pipeline.Response{Code: 550, Enhanced: "5.7.1", Text: "relay denied"}})
	if err := b.Commit(false); err != nil {
		t.Fatal(err)
	}
	st, err = s.Status(rid)
	if err != nil || st.Tenant != "other" || len(st.Recipients) != 1 || st.Recipients[0].State != StateRejected ||
		st.Recipients[0].LastResponse.Code != 550 {
		t.Fatalf("rejected: %+v, %v", st, err)
	}

	if _, err := s.Status(s.NewID()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown id: %v", err)
	}
}

// A live record wins over a history that lost its events (pruned).
func TestStatusWithoutHistory(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	id := store(t, s, qmsg{sender: "a@x.test", rcpts: []string{"b@y.test"}, attempts: []int{1}})
	if err := s.PruneHistory(time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	st, err := s.Status(id)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Events) != 0 || len(st.Recipients) != 1 || st.Recipients[0].State != StateDeferred ||
		st.Recipients[0].Attempts != 1 || st.Recipients[0].Updated.IsZero() || st.Recipients[0].Queue != "y.test" {
		t.Fatalf("%+v", st)
	}
}

// listAll follows cursors to the end and fails on a duplicate.
func listAll(t *testing.T, s *Spool, f ListFilter) (ids []string, rcpts []string, pages int) {
	t.Helper()
	seen := map[string]bool{}
	for {
		p, err := s.List(f)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if f.Limit > 0 && len(p.Messages) > f.Limit {
			t.Fatalf("page of %d, limit %d", len(p.Messages), f.Limit)
		}
		for _, m := range p.Messages {
			if seen[m.ID] {
				t.Fatalf("message %s listed twice", m.ID)
			}
			seen[m.ID] = true
			ids = append(ids, m.ID)
			if len(m.Recipients) == 0 {
				t.Fatalf("message %s listed without recipients", m.ID)
			}
			for _, r := range m.Recipients {
				rcpts = append(rcpts, r.Address)
			}
		}
		if p.Next == "" {
			return ids, rcpts, pages
		}
		if pages > 1000 {
			t.Fatal("listing does not end")
		}
		f.Cursor = p.Next
	}
}

func ptr(s string) *string { return &s }

func TestList(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	// Messages received one minute apart, with ids of those times.
	var all []string
	add := func(m qmsg) string {
		m.at = t0.Add(time.Duration(len(all)) * time.Minute)
		m.id = idAtTime(m.at)
		id := store(t, s, m)
		all = append(all, id)
		return id
	}
	m0 := add(qmsg{sender: "app@Example.COM", tenant: "acme", rcpts: []string{"a@one.test", "b@two.test"}})
	m1 := add(qmsg{sender: "app@example.com", tenant: "acme", rcpts: []string{"c@one.test"}, attempts: []int{1}})
	m2 := add(qmsg{sender: "App@example.com", tenant: "acme", rcpts: []string{"d@TWO.test"}})
	m3 := add(qmsg{sender: "", tenant: "acme", rcpts: []string{"app@example.com"}})
	m4 := add(qmsg{sender: "x@other.test", tenant: "", rcpts: []string{"relay:e@one.test", "f@three.test"}, attempts: []int{0, 3}})
	m5 := add(qmsg{sender: "x@other.test", tenant: "beta", rcpts: []string{"g@one.test"}})
	// Delivered messages leave tombstones; m6 is gone, m7 has one
	// recipient left.
	m6 := add(qmsg{sender: "app@example.com", tenant: "acme", rcpts: []string{"h@one.test"}})
	finish(t, s, m6, 0, "h@one.test", pipeline.EventDelivered, 1, nil, true)
	m7 := add(qmsg{sender: "app@example.com", tenant: "acme", rcpts: []string{"i@one.test", "j@two.test"}})
	finish(t, s, m7, 0, "i@one.test", pipeline.EventDelivered, 1, nil, false)
	m8 := add(qmsg{sender: "late@example.com", tenant: "acme", rcpts: []string{"k@four.test"}, attempts: []int{1}})

	cases := []struct {
		name  string
		f     ListFilter
		ids   []string
		rcpts []string // nil: don't check
	}{
		{"everything", ListFilter{}, []string{m0, m1, m2, m3, m4, m5, m7, m8},
			[]string{"a@one.test", "b@two.test", "c@one.test", "d@TWO.test", "app@example.com", "e@one.test", "f@three.test", "g@one.test", "j@two.test", "k@four.test"}},
		{"queue domain", ListFilter{Queue: "one.test"}, []string{m0, m1, m5}, []string{"a@one.test", "c@one.test", "g@one.test"}},
		{"queue relay", ListFilter{Queue: "relay:smarthost.test:587"}, []string{m4}, []string{"e@one.test"}},
		{"state queued", ListFilter{State: StateQueued}, []string{m0, m2, m3, m4, m5, m7}, nil},
		{"state deferred", ListFilter{State: StateDeferred}, []string{m1, m4, m8}, []string{"c@one.test", "f@three.test", "k@four.test"}},
		{"sender, domain case-insensitive", ListFilter{Sender: ptr("app@EXAMPLE.com")}, []string{m0, m1, m7}, nil},
		{"sender, local part exact", ListFilter{Sender: ptr("App@example.com")}, []string{m2}, nil},
		{"null sender", ListFilter{Sender: ptr("")}, []string{m3}, nil},
		{"recipient domain", ListFilter{RcptDomain: "two.TEST"}, []string{m0, m2, m7}, []string{"b@two.test", "d@TWO.test", "j@two.test"}},
		{"tenant", ListFilter{Tenant: ptr("acme")}, []string{m0, m1, m2, m3, m7, m8}, nil},
		{"no tenant", ListFilter{Tenant: ptr("")}, []string{m4}, nil},
		{"received after (inclusive)", ListFilter{After: t0.Add(4 * time.Minute)}, []string{m4, m5, m7, m8}, nil},
		{"received before (exclusive)", ListFilter{Before: t0.Add(2 * time.Minute)}, []string{m0, m1}, nil},
		{"between", ListFilter{After: t0.Add(90 * time.Second), Before: t0.Add(5 * time.Minute)}, []string{m2, m3, m4}, nil},
		{"empty range", ListFilter{After: t0.Add(time.Hour)}, nil, nil},
		{"combined", ListFilter{Tenant: ptr("acme"), State: StateQueued, RcptDomain: "one.test"}, []string{m0}, []string{"a@one.test"}},
		{"nothing matches", ListFilter{Queue: "nowhere.test"}, nil, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, limit := range []int{0, 1, 2, 3, 1000} {
				f := c.f
				f.Limit = limit
				ids, rcpts, _ := listAll(t, s, f)
				if !slices.Equal(ids, c.ids) {
					t.Fatalf("limit %d: ids %v, want %v", limit, ids, c.ids)
				}
				if c.rcpts != nil && !slices.Equal(rcpts, c.rcpts) {
					t.Fatalf("limit %d: recipients %v, want %v", limit, rcpts, c.rcpts)
				}
			}
		})
	}

	// Entries carry the metadata and live recipient state.
	p, err := s.List(ListFilter{Limit: 1, Cursor: EncodeCursor(m3)})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Messages) != 1 || p.Next == "" {
		t.Fatalf("page %+v", p)
	}
	e := p.Messages[0]
	if e.ID != m4 || e.Sender != "x@other.test" || e.Tenant != "" || e.Source != "http" || e.Size != 5 ||
		!e.Received.Equal(t0.Add(4*time.Minute)) || len(e.Recipients) != 2 {
		t.Fatalf("entry %+v", e)
	}
	if r := e.Recipients[1]; r.State != StateDeferred || r.Attempts != 3 || r.NextAttempt.IsZero() || r.Queue != "three.test" ||
		r.LastResponse == nil || r.LastResponse.Text != "try 3" {
		t.Fatalf("deferred recipient %+v", r)
	}
	if r := e.Recipients[0]; r.State != StateQueued || r.Attempts != 0 || r.LastResponse != nil || r.Queue != "relay:smarthost.test:587" {
		t.Fatalf("queued recipient %+v", r)
	}

	// The scan budget cuts a sparse listing into short pages, without
	// losing or repeating anything.
	defer func(b int) { listScanBudget = b }(listScanBudget)
	listScanBudget = 2
	ids, _, pages := listAll(t, s, ListFilter{Tenant: ptr("beta")})
	if !slices.Equal(ids, []string{m5}) || pages < 4 {
		t.Fatalf("budgeted: %v in %d pages", ids, pages)
	}
	ids, _, _ = listAll(t, s, ListFilter{Limit: 3})
	if !slices.Equal(ids, []string{m0, m1, m2, m3, m4, m5, m7, m8}) {
		t.Fatalf("budgeted, everything: %v", ids)
	}
}

// Messages arriving while a listing is paged through appear on a later
// page (ids grow), finished ones simply vanish: no duplicates either way.
func TestListWhileChanging(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	var ids []string
	for i := 0; i < 10; i++ {
		ids = append(ids, store(t, s, qmsg{sender: "a@x.test", rcpts: []string{"b@y.test"}}))
	}
	p, err := s.List(ListFilter{Limit: 4})
	if err != nil {
		t.Fatal(err)
	}
	finish(t, s, ids[5], 0, "b@y.test", pipeline.EventDelivered, 1, nil, true)
	ids = append(ids, store(t, s, qmsg{sender: "a@x.test", rcpts: []string{"b@y.test"}}))
	got := []string{}
	for _, m := range p.Messages {
		got = append(got, m.ID)
	}
	rest, _, _ := listAll(t, s, ListFilter{Limit: 4, Cursor: p.Next})
	got = append(got, rest...)
	want := append(slices.Clone(ids[:5]), ids[6:]...)
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestListBadInput(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	for _, c := range []string{"x", "!!", EncodeCursor("not-an-id-but-26-chars-xx"), "MDFBUlozTkRFS1RTVjRSUkZGUTY5RzVGQVY"} {
		if _, err := s.List(ListFilter{Cursor: c}); !errors.Is(err, ErrBadCursor) {
			t.Errorf("cursor %q: %v", c, err)
		}
	}
	if _, err := s.List(ListFilter{State: StateDelivered}); err == nil {
		t.Error("state delivered accepted")
	}
	id := s.NewID()
	if got, err := DecodeCursor(EncodeCursor(id)); err != nil || got != id {
		t.Errorf("cursor round trip: %q %v", got, err)
	}
}

// BenchmarkList pages through 20,000 queued messages behind 10,000
// delivered ones (their tombstones sit at the head of the range).
func BenchmarkList(b *testing.B) {
	s := open(b, b.TempDir())
	defer s.Close()
	fill := func(n int, tenant string) []string {
		var ids []string
		for i := 0; i < n; i += 1000 {
			batch := s.NewBatch()
			for j := i; j < i+1000 && j < n; j++ {
				id := s.NewID()
				ids = append(ids, id)
				if err := batch.PutMessage(&Meta{ID: id, Source: "smtp", Sender: "app@example.com", Tenant: tenant,
					Received: time.Now(), Size: 2048}, []byte("x")); err != nil {
					b.Fatal(err)
				}
				d := fmt.Sprintf("d%d.test", j%50)
				if err := batch.PutRecipient(&Recipient{MsgID: id, Idx: 0, Address: "u@" + d, Domain: d, Route: pipeline.MX()}); err != nil {
					b.Fatal(err)
				}
			}
			if err := batch.Commit(false); err != nil {
				b.Fatal(err)
			}
		}
		return ids
	}
	gone := fill(10000, "acme")
	batch := s.NewBatch()
	for _, id := range gone {
		batch.DeleteRecipient(id, 0)
		batch.DeleteMessage(id)
	}
	if err := batch.Commit(false); err != nil {
		b.Fatal(err)
	}
	fill(20000, "acme")
	fill(1, "rare")

	b.Run("page100", func(b *testing.B) {
		cursor := ""
		for i := 0; i < b.N; i++ {
			p, err := s.List(ListFilter{Cursor: cursor})
			if err != nil {
				b.Fatal(err)
			}
			cursor = p.Next
		}
	})
	b.Run("page1000_queue", func(b *testing.B) {
		cursor := ""
		for i := 0; i < b.N; i++ {
			p, err := s.List(ListFilter{Queue: "d7.test", Limit: 1000, Cursor: cursor})
			if err != nil {
				b.Fatal(err)
			}
			cursor = p.Next
		}
	})
	b.Run("sparse_tenant_full_scan", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			f := ListFilter{Tenant: ptr("rare")}
			for {
				p, err := s.List(f)
				if err != nil {
					b.Fatal(err)
				}
				if p.Next == "" {
					break
				}
				f.Cursor = p.Next
			}
		}
	})
}
