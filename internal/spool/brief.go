package spool

// The queue's start-up scan decodes only what its index keeps (issue 21:
// restarting with a million queued recipients spent about two thirds of
// its CPU in encoding/json decoding every field of every record). Why by
// hand: decoding into a minimal struct with encoding/json saved little
// (BenchmarkBriefDecode: 10–32 µs a record pair against 11–16 for the
// full decode; this reader 2.6–3.4 µs, BENCHMARKS.md "Issue 21 item 3: a
// pointer-free index"); faster drop-in JSON libraries were not measured.

import (
	"bytes"
	"encoding/json"
	"errors"
	"unicode/utf8"

	"github.com/cockroachdb/pebble/v2"
)

// ScanQueued is ScanRecipients for the queue's start-up index: it fills
// only the fields the index reads, and decodes only those.
//
//   - Meta: ID, Source, Sender, Received and Params;
//   - Recipient: MsgID, Idx, Domain, Route, NextAttempt, LastReply and
//     Held.
//
// The other fields are left zero: hand what it yields to nothing that
// delivers or reports (the queue reads a recipient back in full before
// an attempt). A record is still checked to be valid JSON as a whole (a
// corrupt one is skipped with an error log, as ScanRecipients does), and
// fields are matched as encoding/json matches them (case-insensitively,
// the last of duplicates winning); a record this reader does not handle
// itself (a key with an escape or a non-ASCII byte) is decoded with
// encoding/json. Sharing and the callback's rules as for ScanRecipients.
func (s *Spool) ScanQueued(fn func(m *Meta, r *Recipient) error) error {
	return s.scanRecipients(true, fn)
}

// errBriefFallback: a record the brief decoder leaves to encoding/json.
var errBriefFallback = errors.New("spool: record needs a full decode")

// briefMetaAt is metaAt decoding what ScanQueued fills.
func briefMetaAt(it *pebble.Iterator, id string, in *interner) (*Meta, error) {
	v, err := valueAt(it, metaKey(id))
	if err != nil {
		return nil, err
	}
	m := new(Meta)
	if err := in.briefMeta(v, m); err != nil {
		return nil, errors.New("corrupt metadata: " + err.Error())
	}
	return m, nil
}

// briefMeta decodes v's ID, Source, Sender, Received and Params into m.
func (in *interner) briefMeta(v []byte, m *Meta) error {
	var params bool
	err := jsonMembers(v, func(key, val []byte) error {
		switch {
		case fold(key, "tenant"), fold(key, "identity"):
			return briefKind(val, '"')
		case fold(key, "tags"):
			return briefStrings(val)
		case fold(key, "meta"):
			return briefStringMap(val)
		case fold(key, "size"):
			return briefInt(val)
		case fold(key, "id"):
			return in.briefString(val, &m.ID, false)
		case fold(key, "source"):
			return in.briefString(val, &m.Source, true)
		case fold(key, "sender"):
			return in.briefString(val, &m.Sender, true)
		case fold(key, "received"):
			return m.Received.UnmarshalJSON(val)
		case fold(key, "params"):
			if params { // encoding/json merges a repeated object
				return errBriefFallback
			}
			params = true
			p, ok := in.rawParams[string(val)]
			if !ok {
				if err := json.Unmarshal(val, &p); err != nil {
					return err
				}
				if len(in.rawParams) < internMax {
					in.rawParams[string(val)] = p
				}
			}
			m.Params = p
		}
		return nil
	})
	if errors.Is(err, errBriefFallback) {
		*m = Meta{}
		return json.Unmarshal(v, m)
	}
	return err
}

// briefRecipient decodes v's Domain, Route, NextAttempt, LastReply and
// Held into r, which is zero.
func (in *interner) briefRecipient(v []byte, r *Recipient) error {
	err := jsonMembers(v, func(key, val []byte) error {
		switch {
		case fold(key, "addr"), fold(key, "warned"):
			return briefKind(val, '"')
		case fold(key, "params"):
			return briefRcptParams(val)
		case fold(key, "attempts"):
			return briefInt(val)
		case fold(key, "domain"):
			return in.briefString(val, &r.Domain, true)
		case fold(key, "route"):
			if r.Route != nil { // a repeat: encoding/json decodes it into the first
				return errBriefFallback
			}
			return briefShared(in.rawRoutes, val, &r.Route)
		case fold(key, "next"):
			return r.NextAttempt.UnmarshalJSON(val)
		case fold(key, "last"):
			if r.LastReply != nil {
				return errBriefFallback
			}
			return briefShared(in.rawReplies, val, &r.LastReply)
		case fold(key, "held"):
			switch string(val) {
			case "true", "false":
				r.Held = val[0] == 't'
			default:
				return json.Unmarshal(val, &r.Held)
			}
		}
		return nil
	})
	if errors.Is(err, errBriefFallback) {
		*r = Recipient{}
		return json.Unmarshal(v, r)
	}
	return err
}

// briefKind checks the kind of the value val of a string field the
// brief decoders do not fill (its first byte: '"' string, '[' array, '{'
// object; null fits any): a value of another kind is left to
// encoding/json (errBriefFallback), which rejects the record as a full
// decode does.
func briefKind(val []byte, kind byte) error {
	if len(val) > 0 && (val[0] == kind || val[0] == 'n') {
		return nil
	}
	return errBriefFallback
}

// briefInt is briefKind for an int field: null or digits with an
// optional minus sign, short enough not to overflow; anything else
// (a fraction, an exponent) is left to encoding/json.
func briefInt(val []byte) error {
	if string(val) == "null" {
		return nil
	}
	d := val
	if len(d) > 0 && d[0] == '-' {
		d = d[1:]
	}
	if len(d) == 0 || len(d) > 18 {
		return errBriefFallback
	}
	for _, c := range d {
		if c < '0' || c > '9' {
			return errBriefFallback
		}
	}
	return nil
}

// briefStrings checks that val (valid JSON) decodes into a []string:
// null, or an array of strings and nulls; anything else is left to
// encoding/json (errBriefFallback).
func briefStrings(val []byte) error {
	if string(val) == "null" {
		return nil
	}
	if val[0] != '[' {
		return errBriefFallback
	}
	i := skipSpace(val, 1)
	if val[i] == ']' {
		return nil
	}
	for {
		e, ok := scanValue(val, i, 1)
		if !ok {
			return errBriefFallback
		}
		if val[i] != '"' && string(val[i:e]) != "null" {
			return errBriefFallback
		}
		if i = skipSpace(val, e); val[i] == ']' {
			return nil
		}
		i = skipSpace(val, i+1) // past ','
	}
}

// briefStringMap checks that val (valid JSON) decodes into a
// map[string]string: null, or an object of strings and nulls.
func briefStringMap(val []byte) error {
	if string(val) == "null" {
		return nil
	}
	return jsonMembers(val, func(_, v []byte) error {
		if v[0] != '"' && string(v) != "null" {
			return errBriefFallback
		}
		return nil
	})
}

// briefRcptParams checks that val (valid JSON) decodes into a
// pipeline.RcptParams.
func briefRcptParams(val []byte) error {
	if string(val) == "null" {
		return nil
	}
	return jsonMembers(val, func(k, v []byte) error {
		switch {
		case fold(k, "notify"):
			return briefStrings(v)
		case fold(k, "orcpt"):
			return briefKind(v, '"')
		}
		return nil
	})
}

// briefShared decodes the JSON object val into *p, one value per distinct
// encoding (seen, bounded at internMax); null sets *p nil, as
// encoding/json does.
func briefShared[T any](seen map[string]*T, val []byte, p **T) error {
	if string(val) == "null" {
		*p = nil
		return nil
	}
	if v, ok := seen[string(val)]; ok {
		*p = v
		return nil
	}
	v := new(T)
	if err := json.Unmarshal(val, v); err != nil {
		return err
	}
	if len(seen) < internMax {
		seen[string(val)] = v
	}
	*p = v
	return nil
}

// briefString decodes the JSON string val into *s (interned when intern);
// null leaves *s as it is, as encoding/json does.
func (in *interner) briefString(val []byte, s *string, intern bool) error {
	n := len(val)
	if n < 2 || val[0] != '"' || val[n-1] != '"' || bytes.IndexByte(val, '\\') >= 0 || !utf8.Valid(val) {
		return json.Unmarshal(val, s)
	}
	raw := val[1 : n-1]
	if intern {
		if v, ok := in.strs[string(raw)]; ok {
			*s = v
			return nil
		}
	}
	*s = string(raw)
	return nil
}

// fold reports whether the key key (as in the record: ASCII, no escape)
// is name, ignoring ASCII case, as encoding/json matches field names.
func fold(key []byte, name string) bool {
	if len(key) != len(name) {
		return false
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != name[i] {
			return false
		}
	}
	return true
}

// jsonMembers calls fn with the key (without its quotes) and the raw value
// of each member of the JSON object data, in order, and checks that data
// is valid JSON as a whole (one object, whitespace around it). It returns
// errBriefFallback, after checking data as a whole, when a key has an
// escape or a non-ASCII byte (fold could not match it as encoding/json
// does), and when data is null; fn's first error stops it.
func jsonMembers(data []byte, fn func(key, val []byte) error) error {
	var fallback bool
	i := skipSpace(data, 0)
	if e, ok := literal(data, i, "null"); ok && skipSpace(data, e) == len(data) {
		return errBriefFallback // encoding/json decodes a null record as a zero one
	}
	if i >= len(data) || data[i] != '{' {
		return errors.New("not a JSON object")
	}
	i = skipSpace(data, i+1)
	if i < len(data) && data[i] == '}' {
		i++
	} else {
		for {
			if i >= len(data) || data[i] != '"' {
				return errors.New("invalid JSON: object key expected")
			}
			ke, ok := scanString(data, i)
			if !ok {
				return errors.New("invalid JSON string")
			}
			key := data[i+1 : ke-1]
			if bytes.IndexByte(key, '\\') >= 0 || !ascii(key) {
				fallback = true
			}
			i = skipSpace(data, ke)
			if i >= len(data) || data[i] != ':' {
				return errors.New("invalid JSON: ':' expected")
			}
			vs := skipSpace(data, i+1)
			ve, ok := scanValue(data, vs, 1) // inside the record's object
			if !ok {
				return errors.New("invalid JSON value")
			}
			if !fallback {
				if err := fn(key, data[vs:ve]); err != nil {
					return err
				}
			}
			i = skipSpace(data, ve)
			if i < len(data) && data[i] == ',' {
				i = skipSpace(data, i+1)
				continue
			}
			if i < len(data) && data[i] == '}' {
				i++
				break
			}
			return errors.New("invalid JSON: ',' or '}' expected")
		}
	}
	if skipSpace(data, i) != len(data) {
		return errors.New("invalid JSON: data after the object")
	}
	if fallback {
		return errBriefFallback
	}
	return nil
}

func ascii(b []byte) bool {
	for _, c := range b {
		if c >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

func skipSpace(data []byte, i int) int {
	for i < len(data) {
		switch data[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// maxDepth bounds the nesting scanValue follows: encoding/json's limit
// on the objects and arrays open at once, the record's own included.
const maxDepth = 10000

// scanValue returns the end of the JSON value at data[i:], and whether it
// is valid (strings as scanString checks them; numbers and literals as
// RFC 8259 writes them; depth objects and arrays are open around it, at
// most maxDepth with its own).
func scanValue(data []byte, i, depth int) (int, bool) {
	if i >= len(data) {
		return i, false
	}
	switch c := data[i]; {
	case c == '"':
		return scanString(data, i)
	case c == '{' || c == '[':
		if depth+1 > maxDepth {
			return i, false
		}
		closing := byte('}')
		if c == '[' {
			closing = ']'
		}
		i = skipSpace(data, i+1)
		if i < len(data) && data[i] == closing {
			return i + 1, true
		}
		for {
			if c == '{' {
				if i >= len(data) || data[i] != '"' {
					return i, false
				}
				var ok bool
				if i, ok = scanString(data, i); !ok {
					return i, false
				}
				if i = skipSpace(data, i); i >= len(data) || data[i] != ':' {
					return i, false
				}
				i = skipSpace(data, i+1)
			}
			var ok bool
			if i, ok = scanValue(data, i, depth+1); !ok {
				return i, false
			}
			i = skipSpace(data, i)
			switch {
			case i < len(data) && data[i] == ',':
				i = skipSpace(data, i+1)
			case i < len(data) && data[i] == closing:
				return i + 1, true
			default:
				return i, false
			}
		}
	case c == 't':
		return literal(data, i, "true")
	case c == 'f':
		return literal(data, i, "false")
	case c == 'n':
		return literal(data, i, "null")
	case c == '-' || '0' <= c && c <= '9':
		return scanNumber(data, i)
	}
	return i, false
}

func literal(data []byte, i int, lit string) (int, bool) {
	if !bytes.HasPrefix(data[i:], []byte(lit)) {
		return i, false
	}
	return i + len(lit), true
}

// scanNumber: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func scanNumber(data []byte, i int) (int, bool) {
	digits := func() bool {
		s := i
		for i < len(data) && '0' <= data[i] && data[i] <= '9' {
			i++
		}
		return i > s
	}
	if data[i] == '-' {
		i++
	}
	switch {
	case i < len(data) && data[i] == '0':
		i++
	case !digits():
		return i, false
	}
	if i < len(data) && data[i] == '.' {
		i++
		if !digits() {
			return i, false
		}
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		i++
		if i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		if !digits() {
			return i, false
		}
	}
	return i, true
}

// scanString returns the end (after the closing quote) of the JSON
// string at data[i] (a '"'), and whether it is valid: no control
// character, escapes RFC 8259 allows. (Invalid UTF-8 is valid here as it
// is for encoding/json, which replaces it.)
func scanString(data []byte, i int) (int, bool) {
	for i++; i < len(data); i++ {
		switch c := data[i]; {
		case c == '"':
			return i + 1, true
		case c < 0x20:
			return i, false
		case c == '\\':
			i++
			if i >= len(data) {
				return i, false
			}
			switch data[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if i+4 >= len(data) {
					return i, false
				}
				for _, h := range data[i+1 : i+5] {
					if !('0' <= h && h <= '9' || 'a' <= h && h <= 'f' || 'A' <= h && h <= 'F') {
						return i, false
					}
				}
				i += 4
			default:
				return i, false
			}
		}
	}
	return i, false
}
