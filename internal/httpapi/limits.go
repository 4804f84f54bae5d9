package httpapi

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"
)

// checkBody walks a JSON request body once, before anything is decoded,
// and refuses it as soon as it sees something the API would refuse anyway
// and that would otherwise be paid for in memory: the 501st message of a
// batch, a list or object with more entries than its limit, a field
// longer than its limit, invalid UTF-8 (raw bytes, or a \u escape of a
// lone surrogate, which encoding/json would silently replace with U+FFFD)
// or nesting deeper than any request has. It allocates nothing unless it
// refuses. It checks no syntax beyond what it needs: it stops without an
// error at the first syntax error, leaving encoding/json to report it
// (encoding/json scans a whole value before decoding any of it, so a
// syntax error costs no memory there either).
//
// With the counts bounded here, decoding a request costs a bounded number
// of values, each at most a small multiple of the bytes that encode it,
// so a request's memory is a small multiple of its body (a batch of ten
// million "{}" used to be decoded in full, 6.5 GB, before its count was
// checked).
//
// top is the request type (*messageRequest, *batchRequest, *rawRequest
// or anything else, for which only UTF-8 and nesting are checked). Field
// names in the answers are the ones validate uses: "messages[3].tags",
// "messages[3].headers.X-Foo", "to[2]".
func checkBody(body []byte, top any) *apiError {
	var buf [8]seg
	w := walker{b: body, path: buf[:0]}
	var sh shape
	switch top.(type) {
	case *batchRequest:
		sh = shBatch
	case *messageRequest, *rawRequest:
		sh = shMessage
	}
	w.value(sh)
	return w.err
}

type shape uint8

const (
	shAny        shape = iota // no limits but UTF-8 and depth
	shBatch                   // {"messages": [message...]}
	shMessage                 // a message (or raw) request
	shAttachment              // an item of attachments
	shAddrs                   // to, cc, bcc, reply_to: a string or a list
	shTags
	shHeaders
	shMetadata
)

const maxDepth = 32

// seg is one step of the path to the current value.
type seg struct {
	key   []byte // a member name (the input's bytes, or decoded)
	canon string // or the canonical name of a known member
	idx   int    // an array index when both are empty
}

type walker struct {
	b     []byte
	i     int
	err   *apiError
	stop  bool // a syntax error or a refusal: walk no further
	path  []seg
	depth int
	inKey bool // scanning a member name: the path ends at its object
}

// field returns the current path ("messages[3].headers.X-Foo").
func (w *walker) field() string {
	var sb strings.Builder
	for _, s := range w.path {
		if s.key == nil && s.canon == "" {
			sb.WriteByte('[')
			sb.WriteString(strconv.Itoa(s.idx))
			sb.WriteByte(']')
			continue
		}
		if sb.Len() > 0 {
			sb.WriteByte('.')
		}
		if s.canon != "" {
			sb.WriteString(s.canon)
		} else {
			sb.Write(s.key)
		}
	}
	return sb.String()
}

func (w *walker) fail(e *apiError) {
	if w.err == nil {
		w.err = e
	}
	w.stop = true
}

// syntax stops the walk, leaving the error to encoding/json.
func (w *walker) syntax() { w.stop = true }

func (w *walker) next() byte {
	for w.i < len(w.b) {
		switch c := w.b[w.i]; c {
		case ' ', '\t', '\n', '\r':
			w.i++
		default:
			return c
		}
	}
	return 0
}

// value walks one value of shape sh.
func (w *walker) value(sh shape) {
	if w.stop {
		return
	}
	w.depth++
	defer func() { w.depth-- }()
	if w.depth > maxDepth {
		w.fail(errf(http.StatusBadRequest, codeInvalidJSON, "", "the JSON nests deeper than %d levels", maxDepth))
		return
	}
	switch w.next() {
	case '{':
		w.object(sh)
	case '[':
		w.array(sh)
	case '"':
		w.str(sh)
	case 0:
		w.syntax()
	default: // a number, true, false, null: skip the literal
		for w.i < len(w.b) {
			c := w.b[w.i]
			if c == ',' || c == '}' || c == ']' || c == ' ' || c == '\t' || c == '\n' || c == '\r' {
				break
			}
			w.i++
		}
	}
}

// limitOf returns the most entries a list or object of shape sh may
// have in the request, and the refusal beyond it.
func limitOf(sh shape) (int, func(f string) *apiError) {
	switch sh {
	case shBatch:
		return maxBatch, func(string) *apiError { return badField("messages", "at most %d messages per batch", maxBatch) }
	case shAddrs:
		return maxRecipients, func(f string) *apiError {
			return badField(f, "at most %d recipients per message", maxRecipients)
		}
	case shTags:
		return maxTags, func(f string) *apiError { return badField(f, "at most %d tags", maxTags) }
	case shHeaders:
		return maxHeaders, func(f string) *apiError { return badField(f, "at most %d custom headers", maxHeaders) }
	case shMetadata:
		return maxMetadata, func(f string) *apiError { return badField(f, "at most %d metadata keys", maxMetadata) }
	case shAttachment:
		return maxAttachments, func(f string) *apiError { return badField(f, "at most %d attachments", maxAttachments) }
	}
	return -1, nil
}

func (w *walker) array(sh shape) {
	w.i++ // '['
	var elem shape
	limit, refuse := -1, (func(string) *apiError)(nil)
	switch sh {
	case shBatch:
		// {"messages": [...]} reaches here through member: the array
		// of messages.
		limit, refuse = limitOf(shBatch)
		elem = shMessage
	case shAddrs, shTags, shAttachment:
		limit, refuse = limitOf(sh)
		elem = shAny
		if sh == shAddrs {
			elem = shAddrs // a string in the list is one address field
		} else if sh == shTags {
			elem = shTags
		} else {
			elem = shAttachment
		}
	}
	if w.next() == ']' {
		w.i++
		return
	}
	w.path = append(w.path, seg{})
	defer func() { w.path = w.path[:len(w.path)-1] }()
	for n := 0; ; n++ {
		if limit >= 0 && n >= limit {
			w.fail(refuse(w.fieldAbove()))
			return
		}
		w.path[len(w.path)-1] = seg{idx: n}
		switch {
		case elem == shAttachment && w.next() == '{':
			w.object(shAttachment)
		case elem == shMessage && w.next() == '{':
			w.object(shMessage)
		case elem == shAddrs || elem == shTags:
			if w.next() == '"' {
				w.str(elem)
			} else {
				w.value(shAny)
			}
		default:
			w.value(shAny)
		}
		if w.stop {
			return
		}
		switch w.next() {
		case ',':
			w.i++
		case ']':
			w.i++
			return
		default:
			w.syntax()
			return
		}
	}
}

// fieldAbove is field without the last segment.
func (w *walker) fieldAbove() string {
	p := w.path
	w.path = p[:len(p)-1]
	f := w.field()
	w.path = p
	return f
}

// memberShape is the shape of member name of an object of shape sh,
// with its canonical name (encoding/json matches names case-insensitively).
func memberShape(sh shape, name []byte) (shape, string) {
	var names []string
	switch sh {
	case shBatch:
		names = []string{"messages"}
	case shMessage:
		names = []string{"from", "to", "cc", "bcc", "reply_to", "subject", "headers", "attachments", "tags", "metadata"}
	case shAttachment:
		names = []string{"filename", "content_id"}
	default:
		return shAny, ""
	}
	for _, n := range names {
		if len(n) == len(name) && strings.EqualFold(n, string(name)) {
			switch n {
			case "messages":
				return shBatch, n
			case "to", "cc", "bcc", "reply_to":
				return shAddrs, n
			case "tags":
				return shTags, n
			case "headers":
				return shHeaders, n
			case "metadata":
				return shMetadata, n
			case "attachments":
				return shAttachment, n
			}
			return shAny, n // a string field with a length limit
		}
	}
	return shAny, ""
}

// maxLen is the longest a string member may be (-1: no limit), with the
// refusal beyond it; f is the field, parent the object's field.
func maxLen(parent shape, canon string) (int, func(f string) *apiError) {
	switch parent {
	case shMessage:
		switch canon {
		case "from":
			return maxHeaderValue, func(f string) *apiError {
				return badField(f, "%s is longer than %d bytes", f, maxHeaderValue)
			}
		case "subject":
			return maxHeaderValue, func(f string) *apiError {
				return badField(f, "subject has at most %d bytes", maxHeaderValue)
			}
		}
	case shAttachment:
		switch canon {
		case "filename":
			return maxFilenameLen, func(f string) *apiError {
				return badField(f, "a filename has at most %d bytes", maxFilenameLen)
			}
		case "content_id":
			return maxContentIDLen, func(f string) *apiError {
				return badField(f, "a content_id has at most %d bytes", maxContentIDLen)
			}
		}
	case shHeaders:
		return maxHeaderValue, func(f string) *apiError {
			return badField(f, "a header value has at most %d bytes", maxHeaderValue)
		}
	case shMetadata:
		return maxMetaValueLen, func(f string) *apiError {
			return badField(f, "a metadata value has at most %d bytes", maxMetaValueLen)
		}
	case shAddrs:
		return maxHeaderValue, func(f string) *apiError {
			return badField(f, "%s is longer than %d bytes", f, maxHeaderValue)
		}
	case shTags:
		return maxTagLen, func(f string) *apiError {
			return badField(f, "a tag has 1 to %d bytes", maxTagLen)
		}
	}
	return -1, nil
}

func (w *walker) object(sh shape) {
	w.i++ // '{'
	if w.next() == '}' {
		w.i++
		return
	}
	limit, refuse := -1, (func(string) *apiError)(nil)
	if sh == shHeaders || sh == shMetadata {
		limit, refuse = limitOf(sh)
	}
	w.path = append(w.path, seg{})
	defer func() { w.path = w.path[:len(w.path)-1] }()
	for n := 0; ; n++ {
		if limit >= 0 && n >= limit {
			w.fail(refuse(w.fieldAbove()))
			return
		}
		if w.next() != '"' {
			w.syntax()
			return
		}
		name, ok := w.key()
		if !ok {
			return
		}
		if w.next() != ':' {
			w.syntax()
			return
		}
		w.i++
		var msh shape
		var canon string
		switch sh {
		case shHeaders, shMetadata:
			w.path[len(w.path)-1] = seg{key: name}
			if sh == shHeaders && len(name) > maxHeaderName {
				w.fail(badField(w.field(), "a header name has 1 to %d characters", maxHeaderName))
				return
			}
			if sh == shMetadata && len(name) > maxMetaKeyLen {
				w.fail(badField(w.fieldAbove(), "a metadata key has 1 to %d bytes", maxMetaKeyLen))
				return
			}
			if w.next() == '"' {
				w.str(sh)
			} else {
				w.value(shAny)
			}
		default:
			msh, canon = memberShape(sh, name)
			if canon != "" {
				w.path[len(w.path)-1] = seg{canon: canon}
			} else {
				w.path[len(w.path)-1] = seg{key: name}
			}
			switch {
			case msh == shBatch && w.next() == '[':
				w.array(shBatch)
			case msh == shAddrs && w.next() == '"':
				// One address: validate names it as the list's item 0.
				w.path = append(w.path, seg{idx: 0})
				w.str(shAddrs)
				w.path = w.path[:len(w.path)-1]
			case (msh == shAddrs || msh == shTags || msh == shAttachment) && w.next() == '[':
				w.array(msh)
			case (msh == shHeaders || msh == shMetadata) && w.next() == '{':
				w.object(msh)
			case canon != "" && msh == shAny && w.next() == '"':
				w.strField(sh, canon)
			default:
				w.value(shAny)
			}
		}
		if w.stop {
			return
		}
		switch w.next() {
		case ',':
			w.i++
		case '}':
			w.i++
			return
		default:
			w.syntax()
			return
		}
	}
}

// key reads a member name; an escaped one is decoded (allocating, rare).
func (w *walker) key() ([]byte, bool) {
	start := w.i + 1
	w.inKey = true
	_, escaped := w.scanString()
	w.inKey = false
	if w.stop {
		return nil, false
	}
	raw := w.b[start : w.i-1]
	if !escaped {
		return raw, true
	}
	var s string
	if json.Unmarshal(w.b[start-1:w.i], &s) != nil {
		w.syntax()
		return nil, false
	}
	return []byte(s), true
}

// str walks a string value in a list or object of shape parent (shAny:
// no length limit).
func (w *walker) str(parent shape) {
	n, _ := w.scanString()
	if w.stop {
		return
	}
	if limit, refuse := maxLen(parent, ""); limit >= 0 && n > limit {
		w.fail(refuse(w.field()))
	}
}

// strField walks the string value of member canon of an object of shape
// parent.
func (w *walker) strField(parent shape, canon string) {
	n, _ := w.scanString()
	if w.stop {
		return
	}
	if limit, refuse := maxLen(parent, canon); limit >= 0 && n > limit {
		w.fail(refuse(w.field()))
	}
}

// scanString walks a string (w.b[w.i] is its quote) and returns the
// length of its decoded value, and whether it had escapes. Invalid UTF-8
// and escaped lone surrogates are refused, naming the current field.
func (w *walker) scanString() (n int, escaped bool) {
	b := w.b
	i := w.i + 1
	for {
		j := i
		for j < len(b) {
			c := b[j]
			if c == '"' || c == '\\' || c < 0x20 {
				break
			}
			j++
		}
		if !utf8.Valid(b[i:j]) {
			w.fail(w.notUTF8())
			return 0, false
		}
		n += j - i
		if j >= len(b) || b[j] < 0x20 {
			w.syntax()
			return 0, false
		}
		if b[j] == '"' {
			w.i = j + 1
			return n, escaped
		}
		// A backslash.
		escaped = true
		if j+1 >= len(b) {
			w.syntax()
			return 0, false
		}
		if b[j+1] != 'u' {
			n++
			i = j + 2
			continue
		}
		r, ok := hex4(b, j+2)
		if !ok {
			w.syntax()
			return 0, false
		}
		i = j + 6
		switch {
		case r >= 0xDC00 && r < 0xE000:
			w.fail(w.loneSurrogate())
			return 0, false
		case r >= 0xD800 && r < 0xDC00:
			if i+1 < len(b) && b[i] == '\\' && b[i+1] == 'u' {
				if r2, ok := hex4(b, i+2); ok && r2 >= 0xDC00 && r2 < 0xE000 {
					n += 4
					i += 6
					continue
				}
			}
			w.fail(w.loneSurrogate())
			return 0, false
		}
		n += utf8.RuneLen(r)
	}
}

func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	r := rune(0)
	for _, h := range b[i : i+4] {
		x := hexVal[h]
		if x < 0 {
			return 0, false
		}
		r = r<<4 | rune(x)
	}
	return r, true
}

func (w *walker) notUTF8() *apiError {
	if w.inKey {
		f := w.fieldAbove()
		if f == "" {
			return errf(http.StatusBadRequest, codeInvalidJSON, "", "a field name is not valid UTF-8")
		}
		return badField(f, "a field name in %s is not valid UTF-8", f)
	}
	f := w.field()
	if f == "" {
		return errf(http.StatusBadRequest, codeInvalidJSON, "", "the request body is not valid UTF-8")
	}
	return badField(f, "%s is not valid UTF-8", f)
}

func (w *walker) loneSurrogate() *apiError {
	f := w.field()
	if w.inKey {
		f = w.fieldAbove()
	}
	if f == "" {
		return errf(http.StatusBadRequest, codeInvalidJSON, "", "the request body has a \\u escape of a lone surrogate (not valid UTF-16)")
	}
	return badField(f, "%s has a \\u escape of a lone surrogate (not valid UTF-16)", f)
}
