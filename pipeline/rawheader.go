package pipeline

import (
	"bytes"
	"strings"
	"unsafe"
)

// A message's header may be left unparsed: a plugin built with the Go SDK
// gets the header as one block (protocol 1.2), and parsing it into a
// textproto.Header costs an allocation or more per field (66 for a
// 13-field header) whether or not the hook reads more than a field or
// two. NewMessageUnparsed keeps the block as it came; HeaderValue and
// HeaderValues read it without parsing it, and ParseHeader parses it into
// Header for hooks that want the full API.

// NewMessageUnparsed returns a message whose header section is block,
// left unparsed: Header is empty until ParseHeader is called, and
// HeaderValue, HeaderValues, Bytes, HeaderBytes and WriteTo read the
// block. block must be a header section as ParseHeaderBlock takes it
// (CRLF lines, the empty line last); ok is false otherwise, and the
// caller parses it with ParseMessage instead. block must not change
// afterwards: the values HeaderValue returns may point into it.
func NewMessageUnparsed(txn *Txn, block, body []byte) (m *Message, ok bool) {
	if _, ok := scanHeaderBlock(block, nil, false); !ok {
		return nil, false
	}
	return &Message{Txn: txn, Body: body, unparsed: block}, true
}

// HeaderUnparsed reports whether m's header is still the unparsed block
// NewMessageUnparsed was given (Header is then empty).
func (m *Message) HeaderUnparsed() bool { return m.unparsed != nil }

// ParseHeader parses a header left unparsed (NewMessageUnparsed) into
// Header, once: fields already added to Header stay above the parsed ones,
// as if they had been added after parsing. It does nothing for a message
// whose header is parsed. Not safe for concurrent use with any other
// method of m while the header is unparsed.
func (m *Message) ParseHeader() {
	if m.unparsed == nil {
		return
	}
	h, ok := ParseHeaderBlock(m.unparsed)
	if !ok { // NewMessageUnparsed checked the block
		panic("pipeline: unparsed header block no longer well formed")
	}
	// Fields added before parsing: m.Header lists them top to bottom;
	// each AddRaw (or Add) prepends, so add them bottom first.
	// A field's raw bytes are copied only when they read back as its
	// value: those of a field added with Add are formatted from it, and
	// may not (blanks at its ends, runs of blanks at a fold); such a field
	// is added again with Add, which writes the same bytes.
	var added []fieldCopy
	for f := m.Header.Fields(); f.Next(); {
		raw, err := f.Raw()
		if err != nil || !readsBack(raw, f.Value()) {
			raw = nil
		}
		added = append(added, fieldCopy{f.Key(), f.Value(), raw})
	}
	for i := len(added) - 1; i >= 0; i-- {
		if a := added[i]; a.raw != nil {
			h.AddRaw(a.raw)
		} else {
			h.Add(a.key, a.value)
		}
	}
	m.Header, m.unparsed = h, nil
}

// readsBack reports whether the field raw ("name: value" and CRLF, maybe
// folded) gives value once added with AddRaw (which unfolds and trims it).
func readsBack(raw []byte, value string) bool {
	colon := bytes.IndexByte(raw, ':')
	return colon >= 0 && unfold(raw[colon+1:]) == value
}

type fieldCopy struct {
	key, value string
	raw        []byte
}

// HeaderValue returns the value of the first (topmost) header field named
// key, compared as Header.Get compares (case-insensitively for a valid
// field name), unfolded as Header.Get returns it; "" when there is none.
// For a parsed header it is Header.Get. For an unparsed one
// (NewMessageUnparsed) it reads the block without parsing it and without
// allocating, unless the field is folded over several lines; fields added
// to Header before ParseHeader are seen first (Header.Del and Set before
// ParseHeader remove nothing of the block). The value of a field on one
// line points into the block (see NewMessageUnparsed): a caller that keeps
// it after the block may be released keeps a copy (strings.Clone). Safe
// for concurrent use with other lookups, unless fields were added to
// Header before ParseHeader (the lookup then calls it).
func (m *Message) HeaderValue(key string) string {
	if m.unparsed == nil || m.Header.Len() > 0 {
		m.ParseHeader() // nothing to do unless fields were added on top
		return m.Header.Get(key)
	}
	s := fieldScanner{block: m.unparsed}
	for name, value, ok := s.next(); ok; name, value, ok = s.next() {
		if sameFieldName(name, key) {
			return unfold(value)
		}
	}
	return ""
}

// HeaderValues returns the values of every header field named key, top
// to bottom, as Header.Values does (nil when there is none); see
// HeaderValue.
func (m *Message) HeaderValues(key string) []string {
	if m.unparsed == nil || m.Header.Len() > 0 {
		m.ParseHeader()
		return m.Header.Values(key)
	}
	var out []string
	s := fieldScanner{block: m.unparsed}
	for name, value, ok := s.next(); ok; name, value, ok = s.next() {
		if sameFieldName(name, key) {
			out = append(out, unfold(value))
		}
	}
	return out
}

// fieldScanner walks the fields of a well-formed header block (see
// scanHeaderBlock), top to bottom.
type fieldScanner struct {
	block []byte
	pos   int
}

// next returns the next field's name (trimmed of spaces and tabs) and its
// value as written (from after the colon to the field's final CRLF,
// continuation lines included).
func (s *fieldScanner) next() (name, value []byte, ok bool) {
	b := s.block
	if s.pos+2 >= len(b) { // the empty line
		return nil, nil, false
	}
	start := s.pos
	end := start
	for {
		end += bytes.IndexByte(b[end:], '\n') + 1
		if end >= len(b) || (b[end] != ' ' && b[end] != '\t') {
			break
		}
	}
	s.pos = end
	field := b[start:end]
	colon := bytes.IndexByte(field, ':')
	return bytes.TrimRight(field[:colon], " \t"), field[colon+1:], true
}

// sameFieldName reports whether a field named name is one Header.Get(key)
// returns: both canonicalize (textproto.CanonicalMIMEHeaderKey) to the same
// key. A name of token characters canonicalizes by ASCII case; any other
// is left as it is, so it matches only itself.
func sameFieldName(name []byte, key string) bool {
	if len(name) != len(key) {
		return false
	}
	tn, tk := isMIMEToken(name), isMIMEToken(key)
	switch {
	case tn != tk:
		return false
	case !tn:
		return string(name) == key
	}
	for i := range name {
		a, b := name[i], key[i]
		if 'A' <= a && a <= 'Z' {
			a += 'a' - 'A'
		}
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		if a != b {
			return false
		}
	}
	return true
}

// isMIMEToken reports whether s is a non-empty RFC 7230 token, the names
// net/textproto canonicalizes.
func isMIMEToken[T string | []byte](s T) bool {
	if len(s) == 0 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 0x80 || !tokenChar[c] {
			return false
		}
	}
	return true
}

var tokenChar = func() (t [128]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// unfold returns a field's value as go-message's Header.Get does: each
// line trimmed of its final CR, then of spaces and tabs, empty lines dropped, the rest
// joined by one space. A value on one line is returned without a copy,
// pointing into the block (which does not change: NewMessageUnparsed).
func unfold(v []byte) string {
	var one []byte // the only non-empty line so far
	var b *strings.Builder
	for len(v) > 0 {
		line := v
		if i := bytes.IndexByte(v, '\n'); i >= 0 {
			line, v = v[:i], v[i+1:]
		} else {
			v = nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		line = bytes.Trim(line, " \t")
		if len(line) == 0 {
			continue
		}
		switch {
		case b != nil:
			b.WriteByte(' ')
			b.Write(line)
		case one != nil:
			b = new(strings.Builder)
			b.Grow(len(one) + len(line) + len(v) + 1)
			b.Write(one)
			b.WriteByte(' ')
			b.Write(line)
		default:
			one = line
		}
	}
	if b != nil {
		return b.String()
	}
	if len(one) == 0 {
		return ""
	}
	return unsafe.String(&one[0], len(one))
}
