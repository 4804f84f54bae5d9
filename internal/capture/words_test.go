package capture

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
)

// scanSearch is the search the word index replaced: every message of the
// tenant, newest first, its stored text read and checked for f.Text.
func scanSearch(t *testing.T, s *Store, tenant string, f Filter) []string {
	t.Helper()
	f = f.lower()
	exact := ""
	if isAddress(f.To) {
		exact, f.To = f.To, ""
	}
	s.mu.RLock()
	var es []*entry
	if ti := s.tenants[tenant]; ti != nil {
		es = slices.Clone(ti.entries)
	}
	s.mu.RUnlock()
	var ids []string
	for i := len(es) - 1; i >= 0; i-- {
		e := es[i]
		if !f.matchIndexed(e) || exact != "" && !e.hasAddr(exact) {
			continue
		}
		zv, c, err := s.db.Get(textZKey(tenant, e.s.ID))
		if err != nil {
			t.Fatal(err)
		}
		v, err := unpack(nil, zv)
		if err != nil {
			t.Fatal(err)
		}
		ok := true
		for _, term := range TextTerms(f.Text) {
			ok = ok && strings.Contains(string(v), term)
		}
		c.Close()
		if ok {
			ids = append(ids, e.s.ID)
		}
	}
	return ids
}

var vocab = []string{"order", "orders", "shipped", "welcome", "code", "reset", "password", "your", "the", "an",
	"invoice", "ünïcode", "straße", "日本語", "x1", "42", "4242", "zz", "a", "b"}

func randomText(r *rand.Rand) string {
	var b strings.Builder
	n := 1 + r.IntN(25)
	seps := []string{" ", " ", " ", "\n", ", ", ".", "-", "@", "/ ", ": "}
	for i := 0; i < n; i++ {
		if r.IntN(40) == 0 {
			// A word longer than maxWord.
			b.WriteString(strings.Repeat("long", 17+r.IntN(10)) + vocab[r.IntN(len(vocab))])
		} else {
			b.WriteString(vocab[r.IntN(len(vocab))])
		}
		b.WriteString(seps[r.IntN(len(seps))])
	}
	return b.String()
}

// randomQuery is a substring of one of texts (often across words and
// separators), a vocabulary word, or words in an order no text may have.
func randomQuery(r *rand.Rand, texts []string) string {
	switch r.IntN(7) {
	case 0:
		return vocab[r.IntN(len(vocab))]
	case 1:
		return vocab[r.IntN(len(vocab))] + " " + vocab[r.IntN(len(vocab))]
	case 2:
		return `"` + vocab[r.IntN(len(vocab))] + " " + vocab[r.IntN(len(vocab))] + `"`
	case 3:
		return strings.Repeat("long", 16+r.IntN(3))
	case 4:
		// A phrase from a text, and a word.
		tx := strings.ToLower(texts[r.IntN(len(texts))])
		i := r.IntN(len(tx))
		return `"` + tx[i:i+min(12, len(tx)-i)] + `" ` + vocab[r.IntN(len(vocab))][:1]
	default:
		tx := strings.ToLower(texts[r.IntN(len(texts))])
		i := r.IntN(len(tx))
		j := i + 1 + r.IntN(min(20, len(tx)-i))
		q := tx[i:j]
		if strings.TrimSpace(q) == "" {
			return "the"
		}
		return q
	}
}

// TestWordIndexMatchesScan: over random texts, deletes and retention
// drops, every text search through the word index returns what scanning
// every stored text returns (the same page, in the same order, and the
// same total when it is counted), before and after a restart.
func TestWordIndexMatchesScan(t *testing.T) {
	dir := t.TempDir()
	o := Options{Retention: config.SandboxRetention{Messages: 300}}
	s := open(t, dir, o)
	r := rand.New(rand.NewPCG(1, 23))
	var texts []string
	put := func(n int) {
		for i := 0; i < n; i++ {
			tx := randomText(r)
			texts = append(texts, tx)
			to := fmt.Sprintf("u%d@dest.test", r.IntN(5))
			subj := vocab[r.IntN(len(vocab))]
			if _, err := s.Put("acme", "", "app@sender.test", []string{to}, msg(subj, to, tx)); err != nil {
				t.Fatal(err)
			}
		}
	}
	check := func(stage string) {
		t.Helper()
		for q := 0; q < 300; q++ {
			f := Filter{Text: randomQuery(r, texts)}
			if r.IntN(4) == 0 {
				f.To = fmt.Sprintf("u%d@dest.test", r.IntN(5))
			}
			if r.IntN(6) == 0 {
				f.Subject = vocab[r.IntN(len(vocab))][:1]
			}
			if r.IntN(8) == 0 {
				f.Text = strings.ToUpper(f.Text)
			}
			want := scanSearch(t, s, "acme", f)
			start, limit := 0, 1+r.IntN(40)
			if r.IntN(3) == 0 {
				start = r.IntN(len(want) + 2)
			}
			// Texts read one by one, and (past one seek) in one scan;
			// words looked up, and (past a few postings) not; phrases
			// checked for adjacency in one window, and in windows of 4
			// messages (older candidates left unrefined).
			for pass, seeks := range []int{256, 1, 256} {
				maxTextSeeks = seeks
				if pass == 1 {
					unselectiveMin = -len(texts)
				}
				if pass == 2 {
					refineWindow, refineAbove = 4, 0
				}
				p, err := s.Search("acme", f, start, limit)
				maxTextSeeks, unselectiveMin, refineWindow, refineAbove = 256, 1024, 2048, 64
				if err != nil {
					t.Fatal(err)
				}
				var got []string
				for _, m := range p.Messages {
					got = append(got, m.ID)
				}
				page := want[min(start, len(want)):min(start+limit, len(want))]
				if !slices.Equal(got, page) {
					t.Fatalf("%s: %+v start %d limit %d seeks %d: index gives %d messages %v, scan %d %v", stage, f, start, limit, seeks, len(got), got, len(page), page)
				}
				if p.Total != -1 && p.Total != len(want) {
					t.Fatalf("%s: %+v: total %d, scan finds %d", stage, f, p.Total, len(want))
				}
			}
		}
	}
	put(200)
	check("fresh")
	// Deletes in the middle, then retention drops of the oldest (past
	// 300), enough to rewrite the lists.
	p, _ := s.Search("acme", Filter{}, 0, 1000)
	for i, m := range p.Messages {
		if i%3 == 0 {
			if ok, err := s.Delete("acme", m.ID); !ok || err != nil {
				t.Fatal(ok, err)
			}
		}
	}
	check("after deletes")
	put(1500)
	s.mu.RLock()
	wi := s.tenants["acme"].words
	s.mu.RUnlock()
	if wi.dead >= 4096 && wi.dead*2 >= wi.postings {
		t.Fatalf("dead postings %d of %d: the lists were not rewritten", wi.dead, wi.postings)
	}
	check("after retention")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, o)
	defer s.Close()
	check("after restart")
}

func TestTextTerms(t *testing.T) {
	for in, want := range map[string][]string{
		"":                          nil,
		"  ":                        nil,
		"your order":                {"your", "order"},
		` "your order"  42 `:        {"your order", "42"},
		`a "b c" "d`:                {"a", "b c", "d"},
		`""`:                        nil,
		"bob@example.test order-12": {"bob@example.test", "order-12"},
	} {
		if got := TextTerms(in); !slices.Equal(got, want) {
			t.Errorf("TextTerms(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestWordIndexDeleteRemovesPostings: a deleted or dropped message is
// found by no search, and once its postings are reclaimed its words are
// gone from the index.
func TestWordIndexDeleteRemovesPostings(t *testing.T) {
	s := open(t, t.TempDir(), Options{Retention: config.SandboxRetention{Messages: 10}})
	defer s.Close()
	sm, err := s.Put("acme", "", "a@s.test", []string{"b@d.test"}, msg("hi", "b@d.test", "uniqueword0z common"))
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := s.Search("acme", Filter{Text: "uniqueword0z"}, 0, 10); p.Total != 1 || p.Messages[0].ID != sm.ID {
		t.Fatalf("before delete: %+v", p)
	}
	if ok, _ := s.Delete("acme", sm.ID); !ok {
		t.Fatal("not deleted")
	}
	if p, _ := s.Search("acme", Filter{Text: "uniqueword0z"}, 0, 10); p.Total != 0 || len(p.Messages) != 0 {
		t.Fatalf("after delete: %+v", p)
	}
	// 10,000 more, each with a word of its own: retention keeps 10, so
	// the dropped messages' postings are reclaimed along the way.
	for i := 1; i <= 10000; i++ {
		if _, err := s.Put("acme", "", "a@s.test", []string{"b@d.test"}, msg("hi", "b@d.test", fmt.Sprintf("uniqueword%dz common", i))); err != nil {
			t.Fatal(err)
		}
	}
	for _, w := range []string{"uniqueword0z", "uniqueword1z", "uniqueword9990z"} {
		if p, _ := s.Search("acme", Filter{Text: w}, 0, 10); p.Total != 0 {
			t.Fatalf("%s: dropped, found %+v", w, p)
		}
	}
	if p, _ := s.Search("acme", Filter{Text: "uniqueword9991z"}, 0, 10); p.Total != 1 {
		t.Fatalf("kept message not found: %+v", p)
	}
	if p, _ := s.Search("acme", Filter{Text: "common"}, 0, 100); p.Total != 10 {
		t.Fatalf("common: total %d, want 10", p.Total)
	}
	s.mu.RLock()
	words := len(s.tenants["acme"].words.lists)
	s.mu.RUnlock()
	// 10 live unique words, "common", "hi"; dropped ones since the last
	// rewrite (fewer than the live postings plus 4,096).
	if words > 10+2+4096 {
		t.Fatalf("%d words indexed for 10 messages: dropped postings are not reclaimed", words)
	}
	if n, _ := s.DeleteAll("acme"); n != 10 {
		t.Fatalf("DeleteAll: %d", n)
	}
	if p, _ := s.Search("acme", Filter{Text: "common"}, 0, 10); p.Total != 0 {
		t.Fatalf("after DeleteAll: %+v", p)
	}
}

// BenchmarkIndexWords: the word index's share of a capture — adding the
// words of one more 2 KB message (benchMessage's text) to a tenant that
// holds 100,000 (the map and lists out of the CPU cache, as in a full
// inbox).
func BenchmarkIndexWords(b *testing.B) {
	r := rand.New(rand.NewPCG(3, 3))
	texts := make([]string, 1000)
	for i := range texts {
		_, data := benchMessage(r, 200000+i)
		p := parseSummary(data)
		texts[i] = strings.ToLower(p.subject + "\n" + string(p.text))
	}
	t := &tenantIndex{}
	add := func(k int, text string) {
		e := &entry{seq: t.nextSeq}
		t.nextSeq++
		t.entries = append(t.entries, e)
		t.addWords(e, []byte(text))
	}
	for k := 0; k < 100000; k++ {
		_, data := benchMessage(r, k)
		p := parseSummary(data)
		add(k, strings.ToLower(p.subject+"\n"+string(p.text)))
	}
	b.ReportAllocs()
	b.ResetTimer()
	c0 := processCPU()
	for i := 0; i < b.N; i++ {
		add(i, texts[i%len(texts)])
	}
	b.ReportMetric(float64(processCPU()-c0)/float64(b.N), "cpu-ns/op")
}

// processCPU is the process's user+system CPU time so far: on a loaded
// machine, the figure to compare (wall time per op includes waiting for
// a core).
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestWordIndexConcurrent: captures, text searches, deletes and
// retention drops at once (run with -race); afterwards the index still
// agrees with a scan.
func TestWordIndexConcurrent(t *testing.T) {
	s := open(t, t.TempDir(), Options{Retention: config.SandboxRetention{Messages: 200}})
	defer s.Close()
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 9))
			for i := 0; i < 300; i++ {
				sm, err := s.Put("acme", "", "a@s.test", []string{"b@d.test"}, msg("s", "b@d.test", randomText(r)))
				if err != nil {
					t.Error(err)
					return
				}
				if i%10 == 0 {
					_, _ = s.Delete("acme", sm.ID)
				}
				for _, q := range []string{vocab[r.IntN(len(vocab))], `"the an"`, "or x1"} {
					if _, err := s.Search("acme", Filter{Text: q}, 0, 20); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}(w)
	}
	wg.Wait()
	for _, q := range []string{"order", `"your the"`, "x1 42", "straße"} {
		want := scanSearch(t, s, "acme", Filter{Text: q})
		p, err := s.Search("acme", Filter{Text: q}, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, m := range p.Messages {
			got = append(got, m.ID)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%q: index %d messages, scan %d", q, len(got), len(want))
		}
	}
}

// TestSummaryCountsUnhashedAttachments: the summary's parse skips the
// attachments' hashes but counts them, and finds the text after them.
func TestSummaryCountsUnhashedAttachments(t *testing.T) {
	data := []byte("From: a@s.test\r\nTo: b@d.test\r\nSubject: files\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=XX\r\n\r\n" +
		"--XX\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=a.pdf\r\n\r\n%PDF-1.4 data\r\n" +
		"--XX\r\nContent-Type: text/plain\r\n\r\nthe body text\r\n" +
		"--XX\r\nContent-Type: image/png; name=b.png\r\n\r\nPNGDATA\r\n--XX--\r\n")
	f := parseSummary(data)
	if f.attachments != 2 || !strings.Contains(string(f.text), "the body text") || f.subject != "files" {
		t.Fatalf("summary: %+v", f)
	}
	full := Parse(data)
	if len(full.Attachments) != 2 || full.Attachments[0].SHA256 == "" || full.Attachments[0].Size != len("%PDF-1.4 data") {
		t.Fatalf("Parse: %+v", full.Attachments)
	}
}

// TestPhraseNeedsAdjacentWords: a quoted phrase whose words are in every
// message but side by side in none is answered from the words' positions
// in the index, with no text to read (every text was read before), also
// for tokens that are fragments of several words, for a phrase of three,
// after a rewrite of the lists and after a restart; the messages that do
// hold the phrase are still found.
func TestPhraseNeedsAdjacentWords(t *testing.T) {
	dir := t.TempDir()
	o := Options{Retention: config.SandboxRetention{Messages: 40}}
	s := open(t, dir, o)
	var hold []string
	for i := 0; i < 5000; i++ {
		body := fmt.Sprintf("Thank you for buying a gidget and a widget, order %d. Thanks again, widget team.", i)
		if i%7 == 0 {
			body += " Our widget thanks you."
		}
		sm, err := s.Put("acme", "", "a@s.test", []string{"b@d.test"}, msg("receipt", "b@d.test", body))
		if err != nil {
			t.Fatal(err)
		}
		if i%7 == 0 && i >= 5000-40 {
			hold = append([]string{sm.ID}, hold...)
		}
	}
	check := func(stage string) {
		t.Helper()
		s.mu.RLock()
		ti := s.tenants["acme"]
		for _, c := range []struct {
			terms []string
			maybe int
		}{
			{[]string{"widget thank"}, len(hold)},
			{[]string{"idget than"}, len(hold)},
			{[]string{"our widget thank"}, len(hold)},
			{[]string{"gidget thank"}, 0},
			{[]string{"thank widget"}, 0},
			{[]string{"a widget thank"}, 0},
			{[]string{"widget team"}, 40},
		} {
			m := ti.matchText(c.terms)
			m.refineAll(ti)
			n := 0
			for _, e := range ti.entries {
				if m.maybe.has(e.seq) {
					n++
				}
			}
			if n != c.maybe {
				s.mu.RUnlock()
				t.Fatalf("%s: %q: %d messages left to read, want %d", stage, c.terms, n, c.maybe)
			}
		}
		s.mu.RUnlock()
		p, err := s.Search("acme", Filter{Text: `"widget thank"`}, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, m := range p.Messages {
			got = append(got, m.ID)
		}
		if !slices.Equal(got, hold) {
			t.Fatalf("%s: found %v, want %v", stage, got, hold)
		}
	}
	check("captured")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, o)
	defer s.Close()
	check("reopened")
}
