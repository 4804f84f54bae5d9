package capture

import (
	"bytes"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Filter selects captured messages. Every field set must match: To,
// From, Subject and Text are case-insensitive substrings (To of the To,
// Cc and envelope recipients, or, when it is a whole address
// local@domain.tld, one of them exactly; From of the From field and envelope
// sender; Text of the subject and the text part, or the HTML part's text
// when there is no text part); Tag is one tag, exactly; Since and Until
// bound the capture time (Since inclusive, Until exclusive).
type Filter struct {
	To, From, Subject, Text, Tag string
	Since, Until                 time.Time
}

// lower returns f with its substrings in lower case.
func (f Filter) lower() Filter {
	f.To, f.From, f.Subject, f.Text = strings.ToLower(f.To), strings.ToLower(f.From), strings.ToLower(f.Subject), strings.ToLower(f.Text)
	return f
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
	if f.Tag != "" {
		found := false
		for _, t := range e.s.Tags {
			if t == f.Tag {
				found = true
				break
			}
		}
		if !found {
			return false
		}
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
	if f.Text != "" {
		return s.searchText(tenant, f, start, limit)
	}
	p := &Page{Start: start, Messages: []*Summary{}}
	s.mu.RLock()
	defer s.mu.RUnlock()
	var list []*entry
	if isAddress(f.To) {
		list = s.byAddr[tenant+"\x00"+f.To]
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

// searchText scans tenant's searchable texts from the newest, checking
// the text first and the other filters only for the texts that hold it.
func (s *Store) searchText(tenant string, f Filter, start, limit int) (*Page, error) {
	p := &Page{Total: -1, Start: start, Messages: []*Summary{}}
	exact := ""
	if isAddress(f.To) {
		exact, f.To = f.To, ""
	}
	prefix := textKey(tenant, "")
	upper := append(bytes.Clone(prefix[:len(prefix)-1]), 1)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: upper})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	needle := []byte(f.Text)
	skipped := 0
	for ok := it.Last(); ok; ok = it.Prev() {
		if !bytes.Contains(it.Value(), needle) {
			continue
		}
		id := string(it.Key()[len(prefix):])
		s.mu.RLock()
		e := s.byID[id]
		match := e != nil && f.matchIndexed(e) && (exact == "" || e.hasAddr(exact))
		s.mu.RUnlock()
		if !match {
			continue
		}
		if skipped < start {
			skipped++
			continue
		}
		p.Messages = append(p.Messages, e.s)
		if len(p.Messages) == limit {
			break
		}
	}
	if err := it.Error(); err != nil {
		return nil, err
	}
	p.Count = len(p.Messages)
	return p, nil
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
