package capture

import (
	"bytes"
	"encoding/binary"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"
)

// searchText is a message's searchable text (subject and text part,
// lower case: what is stored under kTextZ and searched) cut into its
// distinct words, with where each word is. A capture makes it in one
// pass over the text (newSearchText: lower-casing, finding the words and
// telling repeats apart together, no string per word), before the
// store's lock; the word index then lists the message under each word
// (addSplit).
//
// Words are forWords's: maximal runs of letters and digits, cut to
// maxWord bytes at a rune boundary.
//
// A searchText is one goroutine's; release gives its buffers back for
// the next capture, after which it must not be used.
type searchText struct {
	text []byte
	// own: text is the searchText's buffer (newSearchText), not the
	// caller's (wordsOf).
	own bool
	// spans holds each distinct word's start and end in text, in the
	// order the words first appear: word j is text[spans[2j]:spans[2j+1]].
	spans []int32
	// pos holds each word's positions (word numbers in the text, from
	// 0), ascending: word j's are pos[at[j]:at[j+1]].
	pos []uint32
	at  []int32
	// occ is the word number of each position (scratch).
	occ  []int32
	long bool // a word was longer than maxWord
}

var searchTexts = sync.Pool{New: func() any { return new(searchText) }}

// maxPooledText is the largest buffer release keeps, in bytes (256 KiB:
// the text, the words' positions or their bounds): a pooled buffer
// outlives its capture (sync.Pool keeps it across a garbage
// collection), so a large message's are left to the garbage collector.
const maxPooledText = 256 << 10

// newSearchText makes the searchable text of a message with the given
// subject and text part, strings.ToLower(subject + "\n" + body), and
// cuts it into its words.
func newSearchText(subject string, body []byte) *searchText {
	st := searchTexts.Get().(*searchText)
	st.own = true
	n := len(subject) + 1 + len(body)
	if cap(st.text) < n {
		st.text = make([]byte, n, n+n/4)
	}
	t := st.text[:n]
	copy(t, subject)
	t[len(subject)] = '\n'
	copy(t[len(subject)+1:], body)
	st.text = t
	if !st.split(true) {
		// Not ASCII: Unicode's lower case (which may change a rune's
		// length, and writes invalid UTF-8 as U+FFFD), then the words.
		st.text = append(st.text[:0], strings.ToLower(subject+"\n"+string(body))...)
		st.split(false)
	}
	return st
}

// wordsOf cuts text (lower case already: a stored text) into its words;
// text is not copied and must not change until release.
func wordsOf(text []byte) *searchText {
	st := searchTexts.Get().(*searchText)
	st.text, st.own = text, false
	st.split(false)
	return st
}

// release gives st's buffers back to the pool.
func (st *searchText) release() {
	if !st.own || cap(st.text) > maxPooledText {
		st.text = nil
	}
	if 4*max(cap(st.occ), cap(st.pos), cap(st.spans), cap(st.at)) > maxPooledText {
		*st = searchText{text: st.text, own: st.own}
	}
	searchTexts.Put(st)
}

// words is how many distinct words st has.
func (st *searchText) words() int { return len(st.spans) / 2 }

// word returns word j (a slice of st.text).
func (st *searchText) word(j int) []byte { return st.text[st.spans[2*j]:st.spans[2*j+1]] }

// positions returns word j's positions, ascending.
func (st *searchText) positions(j int) []uint32 { return st.pos[st.at[j]:st.at[j+1]] }

// byteClass: 0 separates words, 1 is part of one (a lower-case ASCII
// letter or digit), 2 is an upper-case ASCII letter, 3 starts or
// continues a multi-byte UTF-8 rune.
var byteClass = func() (c [256]byte) {
	for i := range c {
		switch {
		case 'a' <= i && i <= 'z' || '0' <= i && i <= '9':
			c[i] = 1
		case 'A' <= i && i <= 'Z':
			c[i] = 2
		case i >= utf8.RuneSelf:
			c[i] = 3
		}
	}
	return c
}()

// wordLower is an ASCII letter's or digit's lower case, 0 for any
// other byte.
var wordLower = func() (l [256]byte) {
	for i, c := range byteClass {
		switch c {
		case 1:
			l[i] = byte(i)
		case 2:
			l[i] = byte(i) + 'a' - 'A'
		}
	}
	return l
}()

// split finds st.text's words; with lower, it also lower-cases the
// text, and returns false (st left to be split again) at the first
// byte that is not ASCII.
func (st *searchText) split(lower bool) bool {
	st.spans, st.occ, st.long = st.spans[:0], st.occ[:0], false
	// A message repeats many of its words: a small open-addressed set
	// of the words seen numbers them without a map for most messages
	// (a map takes over for the rest once it is 3/4 full).
	var seenH [512]uint32
	var seenJ [512]int32
	var more map[string]int32
	text := st.text
	emit := func(start, end int) {
		n, cut := cutWord(text[start:end])
		st.long = st.long || cut
		end = start + n
		w := text[start:end]
		h := wordHash(w)
		i := h % uint32(len(seenH))
		for seenH[i] != 0 && (seenH[i] != h || !bytes.Equal(st.word(int(seenJ[i])), w)) {
			i = (i + 1) % uint32(len(seenH))
		}
		if seenH[i] != 0 {
			st.occ = append(st.occ, seenJ[i])
			return
		}
		if j, ok := more[string(w)]; ok {
			st.occ = append(st.occ, j)
			return
		}
		j := int32(st.words())
		st.spans = append(st.spans, int32(start), int32(end))
		st.occ = append(st.occ, j)
		if st.words() <= len(seenH)*3/4 {
			seenH[i], seenJ[i] = h, j
			return
		}
		if more == nil {
			more = map[string]int32{}
		}
		more[string(w)] = j
	}
	if !scanWords(text, lower, emit) {
		return false
	}
	st.group()
	return true
}

// scanWords calls emit with where each word of text starts and ends
// (uncut: see cutWord). With lower, it lower-cases text's ASCII letters
// as it goes, and stops at the first byte that is not ASCII, returning
// false (text is then partly lower-cased).
func scanWords(text []byte, lower bool, emit func(start, end int)) bool {
	start := -1
	for i := 0; i < len(text); {
		c := text[i]
		word := true
		size := 1
		switch byteClass[c] {
		case 0:
			word = false
		case 1, 2:
			// The rest of a run of ASCII letters and digits.
			j := i
			if lower {
				for ; j < len(text); j++ {
					l := wordLower[text[j]]
					if l == 0 {
						break
					}
					text[j] = l
				}
			} else {
				for j < len(text) && wordLower[text[j]] != 0 {
					j++
				}
			}
			size = j - i
		case 3:
			if lower {
				return false
			}
			var r rune
			r, size = utf8.DecodeRune(text[i:])
			word = unicode.IsLetter(r) || unicode.IsDigit(r)
		}
		if word {
			if start < 0 {
				start = i
			}
		} else if start >= 0 {
			emit(start, i)
			start = -1
		}
		i += size
	}
	if start >= 0 {
		emit(start, len(text))
	}
	return true
}

// cutWord returns how many bytes of word w are indexed: at most
// maxWord, cut at a rune boundary; cut reports that w is longer.
func cutWord[T string | []byte](w T) (n int, cut bool) {
	if len(w) <= maxWord {
		return len(w), false
	}
	n = maxWord
	for n > 0 && !utf8.RuneStart(w[n]) {
		n--
	}
	return n, true
}

// group sorts st.occ's positions by word (a counting sort) into pos
// and at: at[j] counts word j's positions, then sums them to the end of
// its range, which the positions, placed from the last back, move down
// to its start.
func (st *searchText) group() {
	n := st.words()
	st.at = growInt32(st.at, n+1)
	clear(st.at)
	for _, j := range st.occ {
		st.at[j]++
	}
	for j := 1; j < len(st.at); j++ {
		st.at[j] += st.at[j-1]
	}
	if cap(st.pos) < len(st.occ) {
		st.pos = make([]uint32, len(st.occ), len(st.occ)+len(st.occ)/4)
	}
	st.pos = st.pos[:len(st.occ)]
	for p := len(st.occ) - 1; p >= 0; p-- {
		j := st.occ[p]
		st.at[j]--
		st.pos[st.at[j]] = uint32(p)
	}
}

func growInt32(b []int32, n int) []int32 {
	if cap(b) < n {
		return make([]int32, n, n+n/4)
	}
	return b[:n]
}

// wordHash is a hash of w for telling a message's words apart (never
// 0), of all its bytes: a hash of some (the ends only, say) put words
// that differ elsewhere ("customer0001234account") in one slot of
// split's small set, each occurrence then probing the whole cluster.
func wordHash(w []byte) uint32 {
	var a, b uint64
	if len(w) >= 8 {
		a = binary.LittleEndian.Uint64(w)
		b = binary.LittleEndian.Uint64(w[len(w)-8:])
		// The bytes between the first and last eight (past 16 bytes).
		for i := 8; i < len(w)-8; i += 8 {
			a = (a ^ binary.LittleEndian.Uint64(w[i:])) * 0xff51afd7ed558ccd
		}
	} else {
		for i, c := range w {
			a |= uint64(c) << (8 * i)
		}
	}
	h := a*0x9e3779b97f4a7c15 ^ b*0xc2b2ae3d27d4eb4f ^ uint64(len(w))
	h ^= h >> 29
	h *= 0xbf58476d1ce4e5b9
	return uint32(h>>32) | 1
}
