package capture

import (
	"bytes"
	"encoding/binary"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"
)

// The word index: per tenant, an inverted index from each word of the
// searchable text (subject and text part, lower case) to the messages
// holding it, so a Text search reads only the texts it cannot decide
// from the index instead of every text of the tenant.
//
// A word is a maximal run of letters and digits (Unicode); everything
// else separates words. Each term of a Text filter (TextTerms) keeps its
// substring semantics: the index only narrows the candidates.
//
//   - A term that is one word (letters and digits only) is in exactly
//     the messages holding a word that contains it: the index answers
//     alone, with no disk read, and Search counts Total.
//   - A term with separators ("order 123", "a@b.test") is a phrase: each
//     of its words must be in the message (the first as the end of a
//     word, the last as the start of one, the middle ones whole). The
//     messages holding all of them are candidates, and each candidate's
//     text is read to check the phrase itself, newest first until the
//     page is full (Total is -1).
//
// The index lives in memory, per tenant, next to the summaries; it is
// built from the stored texts at Open (one sequential read of the text
// range), so it is always the stored texts' index: a capture adds its
// words under the store's lock in the same step that lists it, a delete
// or retention drop unlists the message at once and its postings are
// skipped from then on, and are reclaimed when dead postings outnumber
// live ones (a rewrite of the tenant's lists, under the lock: captures
// and searches of every tenant wait for it, about as long as decoding
// the tenant's lists once; with retention dropping the oldest, once per
// inbox's worth of captures).
//
// Memory: a posting is a delta-encoded varint of the message's sequence
// number, about one or two bytes per distinct word per message, plus
// each distinct word once per tenant.

// maxWord bounds an indexed word (bytes, cut at a rune boundary). A
// message with a longer word is indexed with the word's first maxWord
// bytes and is also listed under longDocs: it is a candidate for every
// Text search, checked against its text.
const maxWord = 64

// posting is the sorted list of the sequence numbers of a tenant's
// messages holding one word: uvarint deltas, the first from 0.
type posting struct {
	data []byte
	last uint64 // the last sequence number appended
	n    int32  // how many are listed, dead ones included
}

func (p *posting) add(seq uint64) bool {
	if p.n > 0 && p.last == seq {
		return false
	}
	p.data = binary.AppendUvarint(p.data, seq-p.last)
	p.last = seq
	p.n++
	return true
}

// each calls fn with every sequence number listed, ascending.
func (p *posting) each(fn func(seq uint64)) {
	var seq uint64
	for b := p.data; len(b) > 0; {
		d, n := binary.Uvarint(b)
		b = b[n:]
		seq += d
		fn(seq)
	}
}

// wordIndex is one tenant's word index; guarded by Store.mu.
type wordIndex struct {
	// ids numbers the words; lists[id] lists the messages holding word
	// id. vocab holds every word, in id order, each after a 0 byte, with
	// a 0 byte at the end; starts[id] is where word id begins in it.
	// Searching vocab for a fragment finds the words that contain it in
	// one pass (bytes.Index), without visiting the map.
	ids    map[string]int32
	lists  []posting
	vocab  []byte
	starts []int32
	// longDocs lists the messages with a word longer than maxWord.
	longDocs posting
	postings int // listed in lists and longDocs
	dead     int // of those, postings of removed messages
}

// word returns the id of w, adding it.
func (wi *wordIndex) word(w string) int32 {
	if id, ok := wi.ids[w]; ok {
		return id
	}
	if wi.ids == nil {
		wi.ids = map[string]int32{}
		wi.vocab = []byte{0}
	}
	id := int32(len(wi.lists))
	wi.ids[strings.Clone(w)] = id
	wi.lists = append(wi.lists, posting{})
	wi.starts = append(wi.starts, int32(len(wi.vocab)))
	wi.vocab = append(append(wi.vocab, w...), 0)
	return id
}

// find calls fn with the id of each word containing frag (prefix: that
// starts with it; suffix: that ends with it; both: that is it), until fn
// returns false.
func (wi *wordIndex) find(frag string, prefix, suffix bool, fn func(id int32) bool) {
	if len(wi.vocab) == 0 {
		return
	}
	if prefix && suffix {
		if id, ok := wi.ids[frag]; ok {
			_ = fn(id)
		}
		return
	}
	needle := []byte(frag)
	if prefix {
		needle = append([]byte{0}, needle...)
	}
	if suffix {
		needle = append(needle, 0)
	}
	for from := 0; ; {
		i := bytes.Index(wi.vocab[from:], needle)
		if i < 0 {
			return
		}
		at := from + i
		if prefix {
			at++
		}
		// The word holding at: the last that starts at or before it.
		id := int32(sort.Search(len(wi.starts), func(j int) bool { return int(wi.starts[j]) > at }) - 1)
		if !fn(id) {
			return
		}
		// Go on after that word's end.
		from = wi.end(int(id))
	}
}

// end returns where word id ends in vocab (at its trailing 0 byte).
func (wi *wordIndex) end(id int) int {
	if id+1 < len(wi.starts) {
		return int(wi.starts[id+1]) - 1
	}
	return len(wi.vocab) - 1
}

// forWords calls fn with each word of text (lower case): a slice of
// text, cut to maxWord, and whether it was cut.
func forWords(text string, fn func(w string, cut bool)) {
	start := -1
	for i := 0; i < len(text); {
		c := text[i]
		size := 1
		word := false
		if c < utf8.RuneSelf {
			word = 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || 'A' <= c && c <= 'Z'
		} else {
			var r rune
			r, size = utf8.DecodeRuneInString(text[i:])
			word = unicode.IsLetter(r) || unicode.IsDigit(r)
		}
		if word {
			if start < 0 {
				start = i
			}
		} else if start >= 0 {
			emitWord(text[start:i], fn)
			start = -1
		}
		i += size
	}
	if start >= 0 {
		emitWord(text[start:], fn)
	}
}

func emitWord(w string, fn func(string, bool)) {
	if len(w) <= maxWord {
		fn(w, false)
		return
	}
	n := maxWord
	for n > 0 && !utf8.RuneStart(w[n]) {
		n--
	}
	fn(w[:n], true)
}

// addWords lists e under each word of text; s.mu held, e the tenant's
// newest entry.
func (t *tenantIndex) addWords(e *entry, text string) {
	t.addSplit(e, splitWords(text))
}

// splitText is a text cut into its words, most repeats dropped.
type splitText struct {
	words []string // slices of the text
	long  bool     // a word was longer than maxWord
}

// splitWords cuts text into its words; it needs no lock (Put calls it
// before taking s.mu).
func splitWords(text string) splitText {
	st := splitText{words: make([]string, 0, 256)}
	// A message repeats many of its words: a small set of the words seen
	// drops the repeats before they reach the tenant's map.
	var seenH [512]uint32
	var seenW [512]string
	used := 0
	forWords(text, func(w string, cut bool) {
		st.long = st.long || cut
		if used < len(seenH)*3/4 {
			h := uint32(2166136261)
			for i := 0; i < len(w); i++ {
				h = (h ^ uint32(w[i])) * 16777619
			}
			h |= 1
			i := h % uint32(len(seenH))
			for seenH[i] != 0 && (seenH[i] != h || seenW[i] != w) {
				i = (i + 1) % uint32(len(seenH))
			}
			if seenH[i] != 0 {
				return
			}
			seenH[i], seenW[i] = h, w
			used++
		}
		st.words = append(st.words, w)
	})
	return st
}

// addSplit lists e under each of st's words; s.mu held, e the tenant's
// newest entry.
func (t *tenantIndex) addSplit(e *entry, st splitText) {
	wi := &t.words
	for _, w := range st.words {
		if wi.lists[wi.word(w)].add(e.seq) {
			e.postings++
		}
	}
	if st.long && wi.longDocs.add(e.seq) {
		e.postings++
	}
	wi.postings += e.postings
}

// removedWords accounts for es's postings, now dead, and rewrites the
// tenant's lists once dead postings outnumber live ones; s.mu held, es
// already out of t.entries.
func (t *tenantIndex) removedWords(es []*entry) {
	wi := &t.words
	for _, e := range es {
		wi.dead += e.postings
	}
	if wi.dead < 4096 || wi.dead*2 < wi.postings {
		return
	}
	live := t.seqSet()
	keep := func(p *posting) posting {
		var q posting
		p.each(func(seq uint64) {
			if live.has(seq) {
				q.add(seq)
			}
		})
		q.data = q.data[:len(q.data):len(q.data)]
		return q
	}
	old := *wi
	*wi = wordIndex{}
	for id, w := range old.starts {
		q := keep(&old.lists[id])
		if q.n == 0 {
			continue
		}
		wi.lists[wi.word(string(old.vocab[w:old.end(id)]))] = q
		wi.postings += int(q.n)
	}
	wi.longDocs = keep(&old.longDocs)
	wi.postings += int(wi.longDocs.n)
}

// seqBits is a set of sequence numbers from base.
type seqBits struct {
	base uint64
	w    []uint64
}

func newSeqBits(base, end uint64) seqBits {
	return seqBits{base: base, w: make([]uint64, (end-base+63)/64)}
}

func (b seqBits) set(seq uint64) {
	if seq >= b.base && seq-b.base < uint64(len(b.w))*64 {
		i := seq - b.base
		b.w[i/64] |= 1 << (i % 64)
	}
}

func (b seqBits) has(seq uint64) bool {
	if seq < b.base || seq-b.base >= uint64(len(b.w))*64 {
		return false
	}
	i := seq - b.base
	return b.w[i/64]&(1<<(i%64)) != 0
}

func (b seqBits) and(o seqBits) {
	for i := range b.w {
		b.w[i] &= o.w[i]
	}
}

func (b seqBits) or(o seqBits) {
	for i := range b.w {
		b.w[i] |= o.w[i]
	}
}

func (b seqBits) empty() bool {
	for _, w := range b.w {
		if w != 0 {
			return false
		}
	}
	return true
}

func (b seqBits) clone() seqBits {
	return seqBits{base: b.base, w: append([]uint64(nil), b.w...)}
}

// seqSet returns the sequence numbers of t's live entries.
func (t *tenantIndex) seqSet() seqBits {
	if len(t.entries) == 0 {
		return seqBits{}
	}
	b := newSeqBits(t.entries[0].seq, t.nextSeq)
	for _, e := range t.entries {
		b.set(e.seq)
	}
	return b
}

// textMatch is what the word index says about a Text filter: the
// messages that surely match it (sure) and those that may (maybe: their
// text must be read to know; a superset of sure).
type textMatch struct {
	sure, maybe seqBits
}

// unselective: a word of a Text filter whose lists hold more postings
// than this many per live message is not looked up (decoding the lists
// would cost about what checking the texts does); every message is its
// candidate.
const unselective = 3

// unselectiveMin is added to that bound (tests lower it).
var unselectiveMin = 1024

// matchText looks terms (lower case, at least one) up in t's word
// index; s.mu held (read).
func (t *tenantIndex) matchText(terms []string) textMatch {
	var m textMatch
	if len(t.entries) == 0 {
		return m
	}
	base, end := t.entries[0].seq, t.nextSeq
	long := newSeqBits(base, end)
	t.words.longDocs.each(long.set)
	for i, term := range terms {
		sure, maybe := t.matchTerm(term, base, end)
		if sure.w == nil {
			sure = newSeqBits(base, end)
		}
		maybe.or(long)
		if i == 0 {
			m.sure, m.maybe = sure, maybe
		} else {
			m.sure.and(sure)
			m.maybe.and(maybe)
		}
		if m.maybe.empty() {
			// No message can hold every term (sure is a subset of
			// maybe): the other terms' lookups would change nothing.
			break
		}
	}
	return m
}

// matchTerm returns the messages that surely hold term (nil w: none
// known) and those that may (long words aside).
func (t *tenantIndex) matchTerm(term string, base, end uint64) (sure, maybe seqBits) {
	var toks []string
	forWords(term, func(w string, cut bool) { toks = append(toks, w) })
	all := func() seqBits {
		b := newSeqBits(base, end)
		for i := range b.w {
			b.w[i] = ^uint64(0)
		}
		return b
	}
	if len(toks) == 0 {
		// Only separators: no word to look up.
		return seqBits{}, all()
	}
	// A term that is one word (not cut) is in exactly the messages
	// holding a word that contains it.
	oneWord := len(toks) == 1 && toks[0] == term
	for i, tok := range toks {
		// In a phrase, the first word is the end of a word of the text,
		// the last the start of one, the middle ones whole.
		prefix := len(toks) > 1 && i > 0
		suffix := len(toks) > 1 && i < len(toks)-1
		var ids []int32
		n := 0
		limit := unselective*len(t.entries) + unselectiveMin
		t.words.find(tok, prefix, suffix, func(id int32) bool {
			ids = append(ids, id)
			n += int(t.words.lists[id].n)
			return n <= limit
		})
		var b seqBits
		if n > limit {
			b = all()
			oneWord = false
		} else {
			b = newSeqBits(base, end)
			for _, id := range ids {
				t.words.lists[id].each(b.set)
			}
		}
		if maybe.w == nil {
			maybe = b
		} else {
			maybe.and(b)
		}
	}
	if oneWord {
		return maybe, maybe.clone()
	}
	return seqBits{}, maybe
}
