package capture

import (
	"bytes"
	"slices"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Filter selects captured messages. Every field set must match: To,
// From and Subject are case-insensitive substrings (To of the To, Cc and
// envelope recipients, or, when it is a whole address local@domain.tld,
// one of them exactly; From of the From field and envelope sender); Text
// is a list of terms, each a case-insensitive substring of the searchable
// text (the subject and the text part, or the HTML part's text when there
// is no text part) — see TextTerms; Tag is one tag, exactly; Since and
// Until bound the capture time (Since inclusive, Until exclusive).
type Filter struct {
	To, From, Subject, Text, Tag string
	Since, Until                 time.Time

	terms []string // Text's terms, set by lower
}

// lower returns f with its substrings in lower case and Text split into
// terms.
func (f Filter) lower() Filter {
	f.To, f.From, f.Subject, f.Text = strings.ToLower(f.To), strings.ToLower(f.From), strings.ToLower(f.Subject), strings.ToLower(f.Text)
	f.terms = uniqueTerms(TextTerms(f.Text))
	return f
}

// uniqueTerms drops the repeats of terms (in place; the first of each
// kept, in order): a term found once is found, so a repeat changes no
// result but costs an index lookup and a check of every candidate text.
func uniqueTerms(terms []string) []string {
	if len(terms) < 2 {
		return terms
	}
	seen := make(map[string]struct{}, len(terms))
	out := terms[:0]
	for _, t := range terms {
		if _, ok := seen[t]; !ok {
			seen[t] = struct{}{}
			out = append(out, t)
		}
	}
	return out
}

// MaxTerms is the most distinct text terms a search, wait or stream
// filter may hold: each term is looked up in the word index on its own,
// so an unbounded list would let one request take seconds of CPU. The
// HTTP API refuses more with a 400 naming "text" (or "query").
const MaxTerms = 64

// TooManyTerms reports whether text holds more than MaxTerms distinct
// terms (see TextTerms).
func TooManyTerms(text string) bool { return len(uniqueTerms(TextTerms(text))) > MaxTerms }

// TextTerms splits a Text filter into its terms: words separated by
// spaces, each of which must be in the text (in any order, as Mailpit's
// search does), and double-quoted phrases, each of which must be in the
// text as written ("order 1234" matches "Your order 1234 has shipped",
// not "order 51234" nor "1234 order"). Empty terms are dropped; an
// unterminated quote runs to the end.
func TextTerms(text string) []string {
	var terms []string
	for len(text) > 0 {
		text = strings.TrimLeft(text, " ")
		if text == "" {
			break
		}
		var term string
		if text[0] == '"' {
			i := strings.IndexByte(text[1:], '"')
			if i < 0 {
				term, text = text[1:], ""
			} else {
				term, text = text[1:1+i], text[2+i:]
			}
		} else {
			i := strings.IndexByte(text, ' ')
			if i < 0 {
				i = len(text)
			}
			term, text = text[:i], text[i:]
		}
		if term != "" {
			terms = append(terms, term)
		}
	}
	return terms
}

// holdsTerms reports whether text holds every term.
func holdsTerms(text []byte, terms []string) bool {
	for _, t := range terms {
		if !bytes.Contains(text, []byte(t)) {
			return false
		}
	}
	return true
}

// matchIndexed reports whether e passes every filter but Text; f is
// lower-cased.
func (f *Filter) matchIndexed(e *entry) bool {
	if f.To != "" {
		if isAddress(f.To) {
			if !e.hasAddr(f.To) {
				return false
			}
		} else if !strings.Contains(e.to, f.To) {
			return false
		}
	}
	if f.From != "" && !strings.Contains(e.from, f.From) {
		return false
	}
	if f.Subject != "" && !strings.Contains(e.subject, f.Subject) {
		return false
	}
	if f.Tag != "" && !slices.Contains(e.s.Tags, f.Tag) {
		return false
	}
	if !f.Since.IsZero() && e.s.Created.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && !e.s.Created.Before(f.Until) {
		return false
	}
	return true
}

// Page is one page of a search.
type Page struct {
	// Total is how many messages match (only when the search has no Text
	// filter: with one, -1, as counting would read every text).
	Total    int        `json:"total"`
	Start    int        `json:"start"`
	Count    int        `json:"count"`
	Messages []*Summary `json:"messages"`
}

// Search returns tenant's messages matching f, newest first, skipping
// start and returning at most limit. A To filter that is a whole address
// (local@domain) matches that address exactly, through the address
// index; otherwise it is a substring. A Text filter scans the tenant's
// searchable text newest first, stopping once the page is full.
func (s *Store) Search(tenant string, f Filter, start, limit int) (*Page, error) {
	f = f.lower()
	if len(f.terms) > 0 {
		return s.searchText(tenant, f, start, limit)
	}
	p := &Page{Start: start, Messages: []*Summary{}}
	s.mu.RLock()
	defer s.mu.RUnlock()
	var list []*entry
	if isAddress(f.To) {
		list = s.byAddr[addrKey(tenant, f.To)]
		f.To = ""
	} else if t := s.tenants[tenant]; t != nil {
		list = t.entries
	}
	for i := len(list) - 1; i >= 0; i-- {
		e := list[i]
		if !f.matchIndexed(e) {
			continue
		}
		if p.Total >= start && len(p.Messages) < limit {
			p.Messages = append(p.Messages, e.s)
		}
		p.Total++
	}
	p.Count = len(p.Messages)
	return p, nil
}

// isAddress reports whether a (lower case) is a whole address, not a
// fragment: local@domain with both parts and a dot in the domain.
func isAddress(a string) bool {
	i := strings.LastIndexByte(a, '@')
	return i > 0 && i < len(a)-1 && strings.IndexByte(a[i:], '.') > 0 && !strings.ContainsAny(a, " \t\n")
}

// searchText answers a search with a Text filter from the word index
// (words.go): the messages the index says hold the text are matches; the
// texts of those it says may hold it are read, newest first, until the
// page is full. Total is counted when no text had to be read, else -1.
func (s *Store) searchText(tenant string, f Filter, start, limit int) (*Page, error) {
	p := &Page{Start: start, Messages: []*Summary{}}
	type cand struct {
		e    *entry
		sure bool
	}
	var cands []cand
	s.mu.RLock()
	t := s.tenants[tenant]
	if t == nil {
		s.mu.RUnlock()
		return p, nil
	}
	m := t.matchText(f.terms)
	list := t.entries
	if isAddress(f.To) {
		list = s.byAddr[addrKey(tenant, f.To)]
		f.To = ""
	}
	unsure := false
	for i := len(list) - 1; i >= 0; i-- {
		e := list[i]
		sure := m.sure.has(e.seq)
		if !sure && !m.maybe.has(e.seq) || !f.matchIndexed(e) {
			continue
		}
		if !unsure && sure {
			// Every match so far is known: count, keep the page.
			if p.Total >= start && len(p.Messages) < limit {
				p.Messages = append(p.Messages, e.s)
			}
			p.Total++
			continue
		}
		unsure = true
		cands = append(cands, cand{e, sure})
	}
	// Phrases: past a few candidates (reading those few texts costs
	// less), their words' adjacency is checked (refine) newest first
	// until the candidates left are enough for the page, with some to
	// spare for those whose separators differ; older candidates are
	// left unrefined.
	if len(m.runs) > 0 && len(cands) > refineAbove {
		kept, n := cands[:0], 0
		for j, c := range cands {
			if n >= start+limit+64 {
				kept = append(kept, cands[j:]...)
				break
			}
			if !c.sure {
				if m.refine(t, c.e.seq); !m.maybe.has(c.e.seq) {
					continue
				}
			}
			kept = append(kept, c)
			n++
		}
		cands = kept
	}
	s.mu.RUnlock()
	if !unsure {
		p.Count = len(p.Messages)
		return p, nil
	}
	// Some candidates must be checked against their texts: go on from
	// where the known matches ended.
	skipped := p.Total
	if skipped > start {
		skipped = start
	}
	p.Total = -1
	var texts *textReader
	defer func() {
		if texts != nil {
			texts.close()
		}
	}()
	var held map[*entry]bool // from a scan, once seeks are too many
	seeks := 0
	for i, c := range cands {
		if len(p.Messages) >= limit {
			break
		}
		if !c.sure {
			var ok bool
			switch {
			case held != nil:
				ok = held[c.e]
			case seeks == maxTextSeeks:
				rest := make(map[string]*entry, len(cands)-i)
				for _, c := range cands[i:] {
					if !c.sure {
						rest[c.e.s.ID] = c.e
					}
				}
				var err error
				if held, err = s.scanTexts(tenant, rest, f.terms); err != nil {
					return nil, err
				}
				ok = held[c.e]
			default:
				seeks++
				if texts == nil {
					var err error
					if texts, err = s.newTextReader(tenant); err != nil {
						return nil, err
					}
				}
				var err error
				if ok, err = texts.holds(c.e.s.ID, f.terms); err != nil {
					return nil, err
				}
			}
			if !ok {
				continue
			}
		}
		if skipped < start {
			skipped++
			continue
		}
		p.Messages = append(p.Messages, c.e.s)
	}
	p.Count = len(p.Messages)
	return p, nil
}

// maxTextSeeks: a search reads at most this many texts one by one; past
// that it reads the tenant's whole text range once (sequential reads
// beat many seeks).
var maxTextSeeks = 256

// scanTexts reads every stored text of tenant and returns which of es
// (by id) hold every term.
func (s *Store) scanTexts(tenant string, es map[string]*entry, terms []string) (map[*entry]bool, error) {
	r, err := s.newTextReader(tenant)
	if err != nil {
		return nil, err
	}
	defer r.close()
	held := map[*entry]bool{}
	for _, kind := range []byte{kText, kTextZ} {
		prefix := tenantKey(kind, tenant, "")
		for ok := r.it.SeekGE(prefix); ok && bytes.HasPrefix(r.it.Key(), prefix); ok = r.it.Next() {
			e := es[string(r.it.Key()[len(prefix):])]
			if e == nil {
				continue
			}
			v, err := r.value(kind)
			if err != nil {
				return nil, err
			}
			if holdsTerms(v, terms) {
				held[e] = true
			}
		}
		if err := r.it.Error(); err != nil {
			return nil, err
		}
	}
	return held, nil
}

// textReader reads the stored searchable texts (packed or not,
// packed.go) of one tenant through one iterator, for many lookups.
type textReader struct {
	it     *pebble.Iterator
	tenant string
	key    []byte
	buf    []byte // the texts are decompressed into (value)
}

func (s *Store) newTextReader(tenant string) (*textReader, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{kText}, UpperBound: []byte{kTextZ + 1}})
	if err != nil {
		return nil, err
	}
	return &textReader{it: it, tenant: tenant}, nil
}

// holds reports whether the text of message id holds every term (false
// when it is gone).
func (r *textReader) holds(id string, terms []string) (bool, error) {
	for _, kind := range []byte{kTextZ, kText} {
		r.key = append(append(append(append(r.key[:0], kind), r.tenant...), 0), id...)
		if !r.it.SeekGE(r.key) || !bytes.Equal(r.it.Key(), r.key) {
			if err := r.it.Error(); err != nil {
				return false, err
			}
			continue
		}
		v, err := r.value(kind)
		if err != nil {
			return false, err
		}
		return holdsTerms(v, terms), nil
	}
	return false, nil
}

// value is the text at the iterator, of a key of kind (kText, kTextZ),
// valid until the next call.
func (r *textReader) value(kind byte) ([]byte, error) {
	v, err := r.it.ValueAndErr()
	if err != nil {
		return nil, err
	}
	return valueText(&r.buf, kind, v)
}

func (r *textReader) close() { r.it.Close() }

// loadWords reads every stored text into its tenant's word index (at
// Open, before the store is shared): one sequential read of the text
// ranges, packed and not (an older store's), merged in key order, so
// each tenant's postings are appended by seq.
func (s *Store) loadWords() error {
	var its [2]*pebble.Iterator
	for i, kind := range []byte{kText, kTextZ} {
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{kind}, UpperBound: []byte{kind + 1}})
		if err != nil {
			return err // its[0], if open, is closed by its defer
		}
		defer it.Close()
		its[i] = it
		it.First()
	}
	var buf []byte // the packed texts are decompressed into
	for {
		// The next of the two by tenant and id (the key past its kind).
		i := 0
		switch {
		case !its[0].Valid() && !its[1].Valid():
			if err := its[0].Error(); err != nil {
				return err
			}
			return its[1].Error()
		case !its[0].Valid():
			i = 1
		case its[1].Valid() && bytes.Compare(its[1].Key()[1:], its[0].Key()[1:]) < 0:
			i = 1
		}
		it := its[i]
		k := it.Key()[1:]
		if j := bytes.IndexByte(k, 0); j >= 0 {
			if e := s.byID[string(k[j+1:])]; e != nil && e.s.Tenant == string(k[:j]) {
				if v, err := valueText(&buf, it.Key()[0], it.Value()); err != nil {
					s.log.Error("corrupt captured message text; not searchable by its words", "id", e.s.ID, "err", err)
				} else {
					s.tenants[e.s.Tenant].addWords(e, v)
				}
			}
		}
		it.Next()
	}
}

// hasAddr reports whether a (lower case) is one of e's To, Cc or
// envelope recipient addresses.
func (e *entry) hasAddr(a string) bool {
	for _, l := range [][]string{e.s.To, e.s.Cc, e.s.Recipients} {
		for _, x := range l {
			if strings.EqualFold(x, a) {
				return true
			}
		}
	}
	return false
}
