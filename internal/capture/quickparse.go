package capture

import (
	"bytes"
	"errors"
	"io"
	"mime"
	"strings"

	"github.com/emersion/go-message"
)

// quickParse is parseSummary's reading of the common message a summary
// is made of, about 30 µs faster than the MIME parser: one text/plain
// part (no Content-Type, or text/plain without a name, in UTF-8 or
// US-ASCII), in 7bit, 8bit or binary, with no Content-Disposition. It
// reads the header fields a summary needs (the first From, To, Cc,
// Subject and Message-Id) exactly as go-message does (fields unfolded
// and trimmed, RFC 2047 words decoded), skips the others, and takes the
// body as the text (a slice of data, not a copy). ok is false for any
// other message, or a header it is not sure to read as go-message would
// (malformed lines, no blank line, above 64 KiB): parse reads those.
func quickParse(data []byte) (f summaryFields, ok bool) {
	if len(data) > 0 && (data[0] == ' ' || data[0] == '\t') {
		return f, false
	}
	var h summaryHead
	var ctype, cte string
	nCtype, nCTE := 0, 0
	rest := data
	for {
		if len(data)-len(rest) > 64<<10 {
			return f, false
		}
		line, next, found := cutLine(rest)
		if !found {
			return f, false // no blank line: the header runs to the end
		}
		if len(line) == 0 {
			rest = next // the blank line ending the header
			break
		}
		// One field: this line and its continuation lines.
		field := rest[:len(rest)-len(next)]
		rest = next
		for len(rest) > 0 && (rest[0] == ' ' || rest[0] == '\t') {
			_, next, found = cutLine(rest)
			if !found {
				return f, false
			}
			field = data[len(data)-len(rest)-len(field) : len(data)-len(next)]
			rest = next
		}
		i := bytes.IndexByte(field, ':')
		if i < 0 {
			return f, false
		}
		key := trimSpaceTab(field[:i])
		for _, c := range key {
			if c < 33 || c > 126 || c == ':' {
				return f, false
			}
		}
		k := summaryField(key)
		switch {
		case k < 0:
		case k == hContentType:
			ctype, nCtype = unfold(field[i+1:]), nCtype+1
		case k == hCTE:
			cte, nCTE = unfold(field[i+1:]), nCTE+1
		case k == hContentDisposition:
			return f, false
		case !h.has[k]:
			v := unfold(field[i+1:])
			h.has[k], h.raw[k], h.dec[k] = true, v, v
			if dec, err := summaryWords.DecodeHeader(v); err == nil {
				h.dec[k] = dec
			}
		}
	}
	if nCtype > 1 || nCTE > 1 {
		return f, false
	}
	switch strings.ToLower(cte) {
	case "", "7bit", "8bit", "binary":
	default:
		return f, false
	}
	if !plainText(ctype) {
		return f, false
	}
	if len(rest) > 64<<20 {
		rest = rest[:64<<20] // as parse reads a part
	}
	f = h.fields()
	f.text = rest[:min(len(rest), maxPartBytes)]
	return f, true
}

// plainText reports whether a Content-Type value ("" when there is
// none) is text/plain without a name, in UTF-8 or US-ASCII.
func plainText(ctype string) bool {
	for _, c := range [...]string{"", "text/plain", "text/plain; charset=us-ascii", "text/plain; charset=utf-8"} {
		if strings.EqualFold(ctype, c) {
			return true
		}
	}
	t, params, err := mime.ParseMediaType(ctype)
	if err != nil || t != "text/plain" {
		return false
	}
	for k, v := range params {
		switch {
		case k == "name":
			return false
		case k == "charset" && !strings.EqualFold(v, "utf-8") && !strings.EqualFold(v, "us-ascii"):
			return false
		}
	}
	return true
}

// The header fields quickParse reads: the first five are a summary's
// (summaryHead's indexes).
const (
	hFrom = iota
	hTo
	hCc
	hSubject
	hMessageID
	hContentType
	hCTE
	hContentDisposition
)

var summaryFieldNames = [...]string{"From", "To", "Cc", "Subject", "Message-Id", "Content-Type", "Content-Transfer-Encoding", "Content-Disposition"}

// summaryField returns the index of the field named key (any case) that
// quickParse reads, or -1.
func summaryField(key []byte) int {
	for i, n := range summaryFieldNames {
		if len(key) == len(n) && strings.EqualFold(string(key), n) {
			return i
		}
	}
	return -1
}

// cutLine returns the line at the start of b without its line ending
// ("\n" or "\r\n", as bufio.Reader.ReadLine cuts it) and what follows;
// found is false when b has no "\n".
func cutLine(b []byte) (line, rest []byte, found bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return nil, nil, false
	}
	line = b[:i]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	return line, b[i+1:], true
}

func trimSpaceTab(b []byte) []byte {
	return bytes.TrimFunc(b, func(r rune) bool { return r == ' ' || r == '\t' })
}

// unfold is a field's value as go-message gives it: each physical line
// without its line ending, trimmed of spaces and tabs, the non-empty
// ones joined by a space.
func unfold(v []byte) string {
	var b strings.Builder
	for len(v) > 0 {
		l := v
		if i := bytes.IndexByte(v, '\n'); i >= 0 {
			l, v = v[:i], v[i+1:]
		} else {
			v = nil
		}
		l = bytes.TrimSuffix(l, []byte{'\r'})
		if l = trimSpaceTab(l); len(l) == 0 {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.Write(l)
	}
	return b.String()
}

// summaryWords decodes RFC 2047 words as go-message does: UTF-8 and
// US-ASCII as they are, other charsets through go-message's charset
// reader (go-message/charset, imported by parse.go).
var summaryWords = mime.WordDecoder{CharsetReader: func(charset string, in io.Reader) (io.Reader, error) {
	switch strings.ToLower(charset) {
	case "utf-8", "us-ascii":
		return in, nil
	}
	if message.CharsetReader != nil {
		return message.CharsetReader(strings.ToLower(charset), in)
	}
	return nil, errors.New("unknown charset " + charset)
}}
