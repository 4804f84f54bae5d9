package capture

import (
	"bytes"
	"errors"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Filter selects captured messages. Every field set must match: To,
// From, Subject and Text are case-insensitive substrings (To of the To,
// Cc and envelope recipients; From of the From field and envelope
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
	if f.To != "" && !strings.Contains(e.to, f.To) {
		return false
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
// start and returning at most limit.
func (s *Store) Search(tenant string, f Filter, start, limit int) (*Page, error) {
	f = f.lower()
	s.mu.RLock()
	t := s.tenants[tenant]
	var cands []*entry
	total := 0
	if t != nil {
		for i := len(t.entries) - 1; i >= 0; i-- {
			e := t.entries[i]
			if !f.matchIndexed(e) {
				continue
			}
			if f.Text != "" {
				cands = append(cands, e)
				continue
			}
			if total >= start && len(cands) < limit {
				cands = append(cands, e)
			}
			total++
		}
	}
	s.mu.RUnlock()
	p := &Page{Start: start, Messages: []*Summary{}}
	if f.Text == "" {
		p.Total = total
		for _, e := range cands {
			p.Messages = append(p.Messages, e.s)
		}
		p.Count = len(p.Messages)
		return p, nil
	}
	p.Total = -1
	needle := []byte(f.Text)
	skipped := 0
	for _, e := range cands {
		ok, err := s.textHas(e.s.ID, needle)
		if err != nil {
			return nil, err
		}
		if !ok {
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
	p.Count = len(p.Messages)
	return p, nil
}

// textHas reports whether the searchable text of id holds needle (lower
// case).
func (s *Store) textHas(id string, needle []byte) (bool, error) {
	v, c, err := s.db.Get(textKey(id))
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil // deleted since
	}
	if err != nil {
		return false, err
	}
	ok := bytes.Contains(v, needle)
	c.Close()
	return ok, nil
}
