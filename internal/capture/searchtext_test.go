package capture

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// refWords is the reference for searchText's words, written apart
// from it: the maximal runs of Unicode letters and digits of
// strings.ToLower(subject+"\n"+body) (an invalid byte separates), each
// cut to maxWord bytes at a rune boundary; each distinct word with its
// positions, in first-seen order.
func refWords(text string) (words []string, pos map[string][]uint32, long bool) {
	pos = map[string][]uint32{}
	p := uint32(0)
	add := func(w string) {
		if len(w) > maxWord {
			long = true
			n := maxWord
			for !utf8.RuneStart(w[n]) {
				n--
			}
			w = w[:n]
		}
		if pos[w] == nil {
			words = append(words, w)
		}
		pos[w] = append(pos[w], p)
		p++
	}
	start := -1
	for i, r := range text {
		if unicode.IsLetter(r) || unicode.IsDigit(r) {
			if start < 0 {
				start = i
			}
		} else if start >= 0 {
			add(text[start:i])
			start = -1
		}
	}
	if start >= 0 {
		add(text[start:])
	}
	return words, pos, long
}

func checkSearchText(t *testing.T, st *searchText, want string) {
	t.Helper()
	if string(st.text) != want {
		t.Fatalf("text %q, want %q", st.text, want)
	}
	words, pos, long := refWords(want)
	var got []string
	for j := range st.words() {
		got = append(got, string(st.word(j)))
		if w := string(st.word(j)); !slices.Equal(st.positions(j), pos[w]) {
			t.Fatalf("%q: word %q at %v, want %v", want, w, st.positions(j), pos[w])
		}
	}
	if !slices.Equal(got, words) || st.long != long {
		t.Fatalf("%q: words %q long %v, want %q long %v", want, got, st.long, words, long)
	}
}

// TestSearchText: a capture's searchable text is
// strings.ToLower(subject + "\n" + body) (Unicode's lower case, invalid
// UTF-8 as U+FFFD), and its words and their positions are forWords's,
// for hand-picked and random texts: capitals, non-ASCII letters and
// digits, invalid bytes, words past maxWord (cut at a rune boundary),
// and more distinct words than the small set holds. A pooled searchText
// reused by the next text keeps nothing of the last.
func TestSearchText(t *testing.T) {
	for _, c := range [][2]string{{"", ""}, {"Order 7", "Thank YOU\r\nfor it."}, {"Grüße ÄÖÜ", "ÉTÉ İstanbul"},
		{"ASCII", "then ẞ"}, {"Ǆ", "\xff bad"}, {"s", strings.Repeat("Ab", 40) + " é" + strings.Repeat("é", 40)},
		{"x", strings.Repeat("abcdefgh", 9) + " " + strings.Repeat("abcdefgh", 9) + "z"}} {
		st := newSearchText(c[0], []byte(c[1]))
		checkSearchText(t, st, strings.ToLower(c[0]+"\n"+c[1]))
		st.release()
	}
	r := rand.New(rand.NewPCG(23, 4))
	pieces := []string{"a", "B", "zz", "Order", "ORDER", "order", "42", "é", "É", "ß", "İ", "日本", "٣", "\xff", "\xc3", " ", " ", ", ", "\r\n", ".", "-", "@",
		strings.Repeat("x", 63), strings.Repeat("y", 64), strings.Repeat("Q", 70), strings.Repeat("é", 40)}
	for i := 0; i < 3000; i++ {
		var b strings.Builder
		n := r.IntN(40)
		if i%100 == 0 {
			n = 3000 // past the small set
		}
		for range n {
			if i%100 == 0 {
				b.WriteString("w" + strings.Repeat("k", r.IntN(3)) + string(rune('a'+r.IntN(26))) + string(rune('0'+r.IntN(10))) + string(rune('a'+r.IntN(26))) + " ")
				continue
			}
			b.WriteString(pieces[r.IntN(len(pieces))])
		}
		subject := pieces[r.IntN(len(pieces))] + pieces[r.IntN(len(pieces))]
		st := newSearchText(subject, []byte(b.String()))
		want := strings.ToLower(subject + "\n" + b.String())
		checkSearchText(t, st, want)
		st.release()
		// A stored text (lower case already) splits the same.
		st = wordsOf([]byte(want))
		checkSearchText(t, st, want)
		st.release()
	}
}

// A large message's buffers are not pooled (they would live as long as
// the process), and a stored text given to wordsOf is never kept by the
// pool (the next capture would write into the caller's buffer).
func TestSearchTextPoolKeepsNoLargeOrForeignBuffer(t *testing.T) {
	checkPool := func(stored []byte) {
		t.Helper()
		for range 4 {
			st := searchTexts.Get().(*searchText)
			defer searchTexts.Put(st)
			if cap(st.text) > maxPooledText || 4*cap(st.occ) > maxPooledText || 4*cap(st.pos) > maxPooledText {
				t.Fatalf("a pooled searchText holds %d text bytes, %d positions", cap(st.text), cap(st.pos))
			}
			if stored != nil && cap(st.text) > 0 && &st.text[:1][0] == &stored[0] {
				t.Fatal("the pool kept the caller's stored text")
			}
		}
	}
	newSearchText("s", []byte(strings.Repeat("word ", 200000))).release() // 1 MB, 200,000 positions
	checkPool(nil)
	newSearchText("s", []byte(strings.Repeat("w", 300000))).release() // 300 KB, one word
	checkPool(nil)
	stored := []byte("stored text")
	wordsOf(stored).release()
	checkPool(stored)
	st := newSearchText("Subject", []byte("Body"))
	if &stored[0] == &st.text[0] || string(stored) != "stored text" {
		t.Fatal("a capture wrote into a stored text")
	}
	st.release()
}
