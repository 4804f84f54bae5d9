package capture

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestWordHashSpreadsWordsAlikeAtTheEnds: words of one length that share
// their first and last eight bytes (numbered words, say
// "customer0001234account") land in different slots of split's small
// set. A hash of the ends only put them all in one slot, so each
// occurrence probed the whole cluster of up to 384 words (a 4 MiB text
// of such words took six times as long to split as before issue 23).
func TestWordHashSpreadsWordsAlikeAtTheEnds(t *testing.T) {
	const n = 384 // the words the small set holds
	for _, format := range []string{"customer%07daccount1", "abcdefghijklmnopqrstuvwxyz%07dabcdefghijklmnopqrstuvwxyz0123456", "%07d" + strings.Repeat("z", 57)} {
		slots := map[uint32]bool{}
		hashes := map[uint32]bool{}
		for i := range n {
			h := wordHash(fmt.Appendf(nil, format, i))
			slots[h%512], hashes[h] = true, true
		}
		// A uniform hash fills about 270 distinct slots of 512 with 384 words.
		if len(slots) < n/3 || len(hashes) < n-2 {
			t.Fatalf("%d words %q: %d distinct hashes, %d distinct slots of 512", n, format, len(hashes), len(slots))
		}
	}
}

// TestSearchTextPoolKeepsNoLargeWordList: a text of many distinct words
// (40,000: 160 KiB of positions, 320 KiB of word bounds) leaves no
// buffer above maxPooledText in the pool, the word bounds included.
func TestSearchTextPoolKeepsNoLargeWordList(t *testing.T) {
	var b strings.Builder
	for i := range 40000 {
		fmt.Fprintf(&b, "w%d ", i)
	}
	newSearchText("s", []byte(b.String())).release()
	for range 4 {
		st := searchTexts.Get().(*searchText)
		defer searchTexts.Put(st)
		for _, c := range []int{cap(st.text), 4 * cap(st.spans), 4 * cap(st.pos), 4 * cap(st.at), 4 * cap(st.occ)} {
			if c > maxPooledText {
				t.Fatalf("a pooled searchText holds a %d-byte buffer (text %d, spans %d, pos %d, at %d, occ %d)",
					c, cap(st.text), cap(st.spans), cap(st.pos), cap(st.at), cap(st.occ))
			}
		}
	}
}

// TestConcurrentCapturesKeepTheirOwnTexts: captures at once (ASCII,
// non-ASCII, above the pool's 256 KiB) each store, publish and index
// their own searchable text, never one mixed with another's through the
// pooled buffers (run with -race): each waiter gets its capture, each
// capture's own word finds it alone, and its stored text is
// strings.ToLower(subject + "\n" + body), before and after a restart.
func TestConcurrentCapturesKeepTheirOwnTexts(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	const W, N = 4, 24
	body := func(w, i int) (string, string) {
		tok := fmt.Sprintf("tok%dx%dq", w, i)
		var b strings.Builder
		switch i % 4 {
		case 0:
			b.WriteString("Plain ASCII " + tok + " words")
		case 1:
			b.WriteString("Grüße " + tok + " ÄÖÜ İstanbul")
		case 2:
			b.WriteString(strings.Repeat("Filler WORD ", 24000) + tok) // > 256 KiB
		case 3:
			b.WriteString(strings.Repeat("é", 1000) + " " + tok + strings.Repeat(" ab", 100))
		}
		return "Subj " + tok, b.String()
	}
	var wg sync.WaitGroup
	waitRes := make(chan [2]string, W*N)
	for w := 0; w < W; w++ {
		for i := 0; i < N; i++ {
			if i%5 != 0 {
				continue
			}
			wg.Add(1)
			go func(tok string) {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				sm, err := s.Wait(ctx, "acme", Filter{Text: tok})
				if err != nil {
					t.Error(tok, err)
					return
				}
				waitRes <- [2]string{tok, sm.Subject}
			}(fmt.Sprintf("tok%dx%dq", w, i))
		}
	}
	time.Sleep(200 * time.Millisecond)
	var pw sync.WaitGroup
	for w := 0; w < W; w++ {
		pw.Add(1)
		go func(w int) {
			defer pw.Done()
			for i := 0; i < N; i++ {
				subj, b := body(w, i)
				if _, err := s.Put("acme", "", "a@s.test", []string{"b@d.test"}, msg(subj, "b@d.test", b)); err != nil {
					t.Error(err)
				}
				if _, err := s.Search("acme", Filter{Text: "grüße filler"}, 0, 5); err != nil {
					t.Error(err)
				}
			}
		}(w)
	}
	pw.Wait()
	wg.Wait()
	close(waitRes)
	for r := range waitRes {
		if r[1] != "Subj "+r[0] {
			t.Errorf("wait %s got %q", r[0], r[1])
		}
	}
	check := func() {
		for w := 0; w < W; w++ {
			for i := 0; i < N; i++ {
				subj, b := body(w, i)
				tok := fmt.Sprintf("tok%dx%dq", w, i)
				for _, q := range []string{tok, `"` + tok + `"`} {
					p, err := s.Search("acme", Filter{Text: q}, 0, 10)
					if err != nil || len(p.Messages) != 1 || p.Messages[0].Subject != subj {
						t.Fatalf("%s: %v %+v", q, err, p)
					}
					e := s.byID[p.Messages[0].ID]
					zv, c, err := s.db.Get(textZKey("acme", e.s.ID))
					if err != nil {
						t.Fatal(err)
					}
					v, err := unpack(nil, zv)
					c.Close()
					if err != nil {
						t.Fatal(err)
					}
					if want := strings.ToLower(subj + "\n" + b + "\r\n"); string(v) != want {
						t.Fatalf("%s: stored text differs (%d vs %d bytes)", tok, len(v), len(want))
					}
				}
			}
		}
	}
	check()
	s.Close()
	s = open(t, dir, Options{})
	defer s.Close()
	check()
}
