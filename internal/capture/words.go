package capture

import (
	"bytes"
	"encoding/binary"
	"slices"
	"sort"
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
//     word, the last as the start of one, the middle ones whole), and
//     side by side: the postings hold each word's positions in the
//     text, so the candidates are the messages where the phrase's words
//     follow one another (adjacent). Each candidate's text is read to
//     check the phrase itself (the separators between the words may
//     differ), newest first until the page is full (Total is -1). A
//     phrase whose words are everywhere but never side by side reads
//     no text.
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
// number and its positions' length, and each occurrence's position as a
// delta-encoded varint: about three bytes per distinct word per message
// plus one per repeat, and each distinct word once per tenant.

// maxWord bounds an indexed word (bytes, cut at a rune boundary). A
// message with a longer word is indexed with the word's first maxWord
// bytes and is also listed under longDocs: it is a candidate for every
// Text search, checked against its text.
const maxWord = 64

// posting is the sorted list of the sequence numbers of a tenant's
// messages holding one word, each with the word's positions in the
// message's text: per message, the uvarint delta of its sequence number
// (the first from 0), the uvarint length in bytes of its positions, and
// the positions (word numbers in the text, from 0) as uvarint deltas,
// the first from 0. A search by words skips the positions by their
// length; a phrase reads them (adjacent, words.go's phrase check).
type posting struct {
	data []byte
	last uint64 // the last sequence number appended
	n    int32  // how many are listed, dead ones included
}

// add lists seq (greater than the last listed) with the word's positions
// pos (ascending); false when seq is already the last listed.
func (p *posting) add(seq uint64, pos []uint32) bool {
	if p.n > 0 && p.last == seq {
		return false
	}
	n, prev := 0, uint32(0)
	for _, x := range pos {
		n += uvarintLen(uint64(x - prev))
		prev = x
	}
	p.data = binary.AppendUvarint(p.data, seq-p.last)
	p.data = binary.AppendUvarint(p.data, uint64(n))
	prev = 0
	for _, x := range pos {
		p.data = binary.AppendUvarint(p.data, uint64(x-prev))
		prev = x
	}
	p.last = seq
	p.n++
	return true
}

// addRaw lists seq with positions already encoded (as each gives them).
func (p *posting) addRaw(seq uint64, pos []byte) {
	p.data = binary.AppendUvarint(p.data, seq-p.last)
	p.data = binary.AppendUvarint(p.data, uint64(len(pos)))
	p.data = append(p.data, pos...)
	p.last = seq
	p.n++
}

// uvarintLen is the length of x as a uvarint.
func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

// each calls fn with every sequence number listed, ascending.
func (p *posting) each(fn func(seq uint64)) {
	p.eachPos(func(seq uint64, _ []byte) { fn(seq) })
}

// eachPos calls fn with every sequence number listed, ascending, and the
// word's encoded positions in that message (see nextPos).
func (p *posting) eachPos(fn func(seq uint64, pos []byte)) {
	var seq uint64
	for b := p.data; len(b) > 0; {
		d, n := binary.Uvarint(b)
		b = b[n:]
		l, n := binary.Uvarint(b)
		b = b[n:]
		seq += d
		fn(seq, b[:l])
		b = b[l:]
	}
}

// nextPos decodes the next position of an encoded list after prev (0
// before the first) and returns it with the rest of the list.
func nextPos(b []byte, prev uint32) (uint32, []byte) {
	d, n := binary.Uvarint(b)
	return prev + uint32(d), b[n:]
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

// word returns the id of w, adding it (a copy of w).
func (wi *wordIndex) word(w []byte) int32 {
	if id, ok := wi.ids[string(w)]; ok {
		return id
	}
	if wi.ids == nil {
		wi.ids = map[string]int32{}
		wi.vocab = []byte{0}
	}
	id := int32(len(wi.lists))
	wi.ids[string(w)] = id
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
	scanWords([]byte(text), false, func(start, end int) {
		n, cut := cutWord(text[start:end])
		fn(text[start:start+n], cut)
	})
}

// addWords lists e under each word of text (lower case); s.mu held, e
// the tenant's newest entry.
func (t *tenantIndex) addWords(e *entry, text []byte) {
	st := wordsOf(text)
	t.addSplit(e, st)
	st.release()
}

// addSplit lists e under each of st's words; s.mu held, e the tenant's
// newest entry.
func (t *tenantIndex) addSplit(e *entry, st *searchText) {
	wi := &t.words
	for j := range st.words() {
		if wi.lists[wi.word(st.word(j))].add(e.seq, st.positions(j)) {
			e.postings++
		}
	}
	if st.long && wi.longDocs.add(e.seq, nil) {
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
		p.eachPos(func(seq uint64, pos []byte) {
			if live.has(seq) {
				q.addRaw(seq, pos)
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
		wi.lists[wi.word(old.vocab[w:old.end(id)])] = q
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

func (b seqBits) clear(seq uint64) {
	if seq >= b.base && seq-b.base < uint64(len(b.w))*64 {
		i := seq - b.base
		b.w[i/64] &^= 1 << (i % 64)
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
//
// The phrases' adjacency check (adjacentRun) is left to refine: a search
// with many candidates refines maybe newest first, as far as its page
// needs (a phrase of words in every message costs the positions of the
// few thousand newest messages, not of all); below lo nothing is refined
// yet.
type textMatch struct {
	sure, maybe seqBits
	long        seqBits   // messages with a long word: never refined away
	runs        [][]int32 // the phrases' runs of looked-up tokens, flat: the words each token may be
	runLen      []int     // how many tokens each run has
	lo          uint64
}

// unselective: a word of a Text filter whose lists hold more postings
// than this many per live message is not looked up (decoding the lists
// would cost about what checking the texts does); every message is its
// candidate.
const unselective = 3

// unselectiveMin is added to that bound (tests lower it).
var unselectiveMin = 1024

// matchText looks terms (lower case, at least one) up in t's word
// index; s.mu held (read). The phrases' adjacency is not checked yet:
// see refine.
func (t *tenantIndex) matchText(terms []string) textMatch {
	var m textMatch
	if len(t.entries) == 0 {
		return m
	}
	base, end := t.entries[0].seq, t.nextSeq
	m.long = newSeqBits(base, end)
	t.words.longDocs.each(m.long.set)
	for i, term := range terms {
		sure, maybe, runs := t.matchTerm(term, base, end)
		for _, r := range runs {
			m.runs = append(m.runs, r...)
			m.runLen = append(m.runLen, len(r))
		}
		if sure.w == nil {
			sure = newSeqBits(base, end)
		}
		maybe.or(m.long)
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
	m.lo = end
	if len(m.runs) == 0 || len(m.maybe.w) > 1<<26 { // keys need seq-base < 2^32
		m.lo = base
	}
	return m
}

// refine checks the phrases' adjacency (adjacentRun) for the messages
// from seq down, and a window below (four times the last), clearing from
// maybe the messages that cannot hold them; t is the tenant m was made
// from, s.mu held (read) since matchText.
func (m *textMatch) refine(t *tenantIndex, seq uint64) {
	if seq >= m.lo {
		return
	}
	hi := m.lo
	w := max(4*(m.maybe.base+uint64(len(m.maybe.w))*64-hi), refineWindow)
	lo := m.maybe.base
	if hi >= lo+w {
		lo = hi - w
	}
	lo = min(lo, seq)
	m.lo = lo
	for i, at := 0, 0; i < len(m.runLen); i++ {
		run := m.runs[at : at+m.runLen[i]]
		at += m.runLen[i]
		if !t.adjacentRun(run, m, lo, hi) {
			return
		}
	}
}

// refineWindow is the fewest messages refine checks at a time (tests
// lower it).
var refineWindow uint64 = 2048

// refineAbove: a search whose phrase leaves at most this many candidates
// (after the other filters) reads their texts without refining (tests
// lower it).
var refineAbove = 64

// refineAll refines every message (tests).
func (m *textMatch) refineAll(t *tenantIndex) {
	for m.lo > m.maybe.base {
		m.refine(t, m.maybe.base)
	}
}

// matchTerm returns the messages that surely hold term (nil w: none
// known) and those that may (long words aside), and for a phrase the
// runs of its looked-up tokens whose words must be side by side (see
// adjacentRun).
func (t *tenantIndex) matchTerm(term string, base, end uint64) (sure, maybe seqBits, runs [][][]int32) {
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
		return seqBits{}, all(), nil
	}
	// A term that is one word (not cut) is in exactly the messages
	// holding a word that contains it.
	oneWord := len(toks) == 1 && toks[0] == term
	// The words each token of a phrase may be (nil: not looked up).
	tokIDs := make([][]int32, len(toks))
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
			tokIDs[i] = ids
			if ids == nil {
				tokIDs[i] = []int32{}
			}
		}
		if maybe.w == nil {
			maybe = b
		} else {
			maybe.and(b)
		}
	}
	if oneWord {
		return maybe, maybe.clone(), nil
	}
	// The runs of consecutive looked-up tokens.
	for i := 0; i < len(tokIDs); {
		j := i
		for j < len(tokIDs) && tokIDs[j] != nil {
			j++
		}
		if j-i > 1 {
			runs = append(runs, tokIDs[i:j])
		}
		i = j + 1
	}
	return seqBits{}, maybe, runs
}

// adjacentRun clears from m.maybe the messages in [lo, hi) where the
// words of a phrase's run of tokens are not side by side: run[k] are the
// words token k may be, and a message keeps its place only if, at some
// position p, a word of each token k is at p+k (the words' positions in
// the postings). The texts of the messages left are still read (the
// separators between the words may differ from the phrase's); the texts
// of those cleared cannot hold the phrase and are not read. Messages
// with a long word (m.long) are left. False when no message in [lo, hi)
// is left.
func (t *tenantIndex) adjacentRun(run [][]int32, m *textMatch, lo, hi uint64) bool {
	maybe := m.maybe
	// Start from the token with the fewest postings; keys are
	// (seq-base)<<32 | where the run would start.
	order := make([]int, len(run))
	count := make([]int, len(run))
	for k, ids := range run {
		order[k] = k
		for _, id := range ids {
			count[k] += int(t.words.lists[id].n)
		}
	}
	sort.Slice(order, func(a, b int) bool { return count[order[a]] < count[order[b]] })
	base := maybe.base
	var keys, next []uint64
	for n, k := range order {
		next = next[:0]
		for _, id := range run[k] {
			t.words.lists[id].eachPos(func(seq uint64, pos []byte) {
				if seq < lo || seq >= hi || !maybe.has(seq) || m.long.has(seq) {
					return
				}
				var p uint32
				for len(pos) > 0 {
					p, pos = nextPos(pos, p)
					if p >= uint32(k) {
						next = append(next, (seq-base)<<32|uint64(p-uint32(k)))
					}
				}
			})
		}
		if len(run[k]) > 1 {
			slices.Sort(next)
		}
		if n == 0 {
			keys, next = next, nil
		} else {
			keys = intersectSorted(keys, next)
		}
		// Only the messages with a start left stay candidates.
		for seq := lo; seq < hi; seq++ {
			if !m.long.has(seq) {
				maybe.clear(seq)
			}
		}
		for _, key := range keys {
			maybe.set(base + key>>32)
		}
		if len(keys) == 0 {
			return false
		}
	}
	return true
}

// intersectSorted keeps in a (ascending) the values also in b
// (ascending), in place.
func intersectSorted(a, b []uint64) []uint64 {
	out := a[:0]
	for i, j := 0, 0; i < len(a) && j < len(b); {
		switch {
		case a[i] < b[j]:
			i++
		case a[i] > b[j]:
			j++
		default:
			if len(out) == 0 || out[len(out)-1] != a[i] {
				out = append(out, a[i])
			}
			i++
			j++
		}
	}
	return out
}
