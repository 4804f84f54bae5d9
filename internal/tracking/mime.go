package tracking

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"mime"
	"mime/quotedprintable"
	"strings"

	"github.com/emersion/go-message/textproto"
)

// maxDepth bounds multipart nesting (a message nested deeper is left as
// it is).
const maxDepth = 20

// walker rewrites the text parts of a MIME entity. html and text are
// called with each decoded text/html and (when set) text/plain part
// that is not an attachment; they append the new content to dst and
// report whether they changed anything.
type walker struct {
	html func(dst, src []byte) ([]byte, bool)
	text func(dst, src []byte) ([]byte, bool)
}

// entity rewrites the entity with header h and body (h's
// Content-Transfer-Encoding is updated when the body had to be
// re-encoded). It returns the new body and whether anything changed;
// an entity it cannot read (a bad media type, an encoding it does not
// know, a charset that is not ASCII-compatible) is left as it is.
func (w *walker) entity(h *textproto.Header, body []byte, depth int) ([]byte, bool) {
	if depth > maxDepth {
		return body, false
	}
	mt, params := "text/plain", map[string]string{}
	if ct := h.Get("Content-Type"); ct != "" {
		var err error
		if mt, params, err = mime.ParseMediaType(ct); err != nil {
			return body, false
		}
	}
	if d := strings.ToLower(strings.TrimSpace(h.Get("Content-Disposition"))); strings.HasPrefix(d, "attachment") {
		return body, false
	}
	var fn func(dst, src []byte) ([]byte, bool)
	switch {
	case strings.HasPrefix(mt, "multipart/"):
		return w.multipart(body, params["boundary"], depth)
	case mt == "text/html":
		fn = w.html
	case mt == "text/plain":
		fn = w.text
	}
	if fn == nil || !asciiCompatible(params["charset"]) {
		return body, false
	}
	cte := strings.ToLower(strings.TrimSpace(h.Get("Content-Transfer-Encoding")))
	dec, ok := decode(cte, body)
	if !ok {
		return body, false
	}
	out, changed := fn(make([]byte, 0, len(dec)+len(dec)/8+512), dec)
	if !changed {
		return body, false
	}
	enc, newCTE := encode(cte, out)
	if newCTE != cte {
		h.Set("Content-Transfer-Encoding", newCTE)
	}
	// Keep the body's ending: a part's last line break belongs to the
	// boundary delimiter after it.
	hadCRLF := bytes.HasSuffix(body, []byte("\r\n"))
	switch hasCRLF := bytes.HasSuffix(enc, []byte("\r\n")); {
	case hadCRLF && !hasCRLF:
		enc = append(enc, '\r', '\n')
	case !hadCRLF && hasCRLF && newCTE != "quoted-printable":
		enc = enc[:len(enc)-2]
	}
	return enc, true
}

// asciiCompatible reports whether a text part in charset can be edited
// as bytes (ASCII markup and URLs mean the same bytes in it).
func asciiCompatible(charset string) bool {
	c := strings.ToLower(charset)
	switch {
	case c == "", c == "us-ascii", c == "utf-8", c == "utf8", strings.HasPrefix(c, "iso-8859-"),
		strings.HasPrefix(c, "windows-125"), c == "koi8-r", c == "koi8-u":
		return true
	}
	return false
}

func decode(cte string, body []byte) ([]byte, bool) {
	switch cte {
	case "", "7bit", "8bit", "binary":
		return body, true
	case "quoted-printable":
		return decodeQP(make([]byte, 0, len(body)), body), true
	case "base64":
		clean := make([]byte, 0, len(body))
		for _, c := range body {
			if c != '\r' && c != '\n' && c != ' ' && c != '\t' {
				clean = append(clean, c)
			}
		}
		b := make([]byte, base64.StdEncoding.DecodedLen(len(clean)))
		n, err := base64.StdEncoding.Decode(b, clean)
		return b[:n], err == nil
	}
	return nil, false
}

// encode encodes b for the transfer encoding cte. 7bit and 8bit content
// with a line over 998 octets (RFC 5322 section 2.1.1) is turned into
// quoted-printable; the second result is the encoding used.
func encode(cte string, b []byte) ([]byte, string) {
	switch cte {
	case "base64":
		var out bytes.Buffer
		enc := base64.StdEncoding.EncodeToString(b)
		for len(enc) > 76 {
			out.WriteString(enc[:76])
			out.WriteString("\r\n")
			enc = enc[76:]
		}
		out.WriteString(enc)
		out.WriteString("\r\n")
		return out.Bytes(), cte
	case "quoted-printable":
		return qp(b), cte
	}
	for line := range bytes.Lines(b) {
		if len(bytes.TrimRight(line, "\r\n")) > 998 {
			return qp(b), "quoted-printable"
		}
	}
	return b, cte
}

// decodeQP appends the quoted-printable body src, decoded, to dst (RFC
// 2045 section 6.7): "=XX" is a byte, "=" at the end of a line (after
// optional white space) is a soft line break, white space at the end of
// a line is transport padding and dropped. Like mail readers (and
// unlike mime/quotedprintable, which is also several times slower) it
// is lenient: an "=" that starts neither is kept as it is.
func decodeQP(dst, src []byte) []byte {
	for len(src) > 0 {
		line := src
		next := []byte(nil)
		hard := false
		if i := bytes.IndexByte(src, '\n'); i >= 0 {
			line, next, hard = src[:i], src[i+1:], true
			line = bytes.TrimSuffix(line, []byte("\r"))
		}
		line = bytes.TrimRight(line, " \t")
		soft := bytes.HasSuffix(line, []byte("="))
		if soft {
			line = line[:len(line)-1]
		}
		for len(line) > 0 {
			i := bytes.IndexByte(line, '=')
			if i < 0 {
				dst = append(dst, line...)
				break
			}
			dst = append(dst, line[:i]...)
			if i+2 < len(line) && hexVal(line[i+1]) >= 0 && hexVal(line[i+2]) >= 0 {
				dst = append(dst, byte(hexVal(line[i+1])<<4|hexVal(line[i+2])))
				line = line[i+3:]
				continue
			}
			dst = append(dst, '=')
			line = line[i+1:]
		}
		if hard && !soft {
			dst = append(dst, '\r', '\n')
		}
		src = next
	}
	return dst
}

func hexVal(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'A' && c <= 'F':
		return int(c - 'A' + 10)
	case c >= 'a' && c <= 'f':
		return int(c - 'a' + 10)
	}
	return -1
}

func qp(b []byte) []byte {
	var out bytes.Buffer
	out.Grow(len(b) + len(b)/16)
	w := quotedprintable.NewWriter(&out)
	_, _ = w.Write(b)
	_ = w.Close()
	return out.Bytes()
}

// multipart rewrites each part of a multipart body (RFC 2046 section
// 5.1.1): the preamble, the delimiter lines, the epilogue and every
// unchanged part are copied as they are.
func (w *walker) multipart(body []byte, boundary string, depth int) ([]byte, bool) {
	if boundary == "" {
		return body, false
	}
	delim := []byte("--" + boundary)
	var out []byte
	changed := false
	copied := 0 // body[:copied] is in out (once changed)
	partStart := -1
	for pos := 0; pos <= len(body); {
		// pos is the start of a line.
		if bytes.HasPrefix(body[pos:], delim) {
			rest := body[pos+len(delim):]
			closing := bytes.HasPrefix(rest, []byte("--"))
			if closing {
				rest = rest[2:]
			}
			k := 0
			for k < len(rest) && (rest[k] == ' ' || rest[k] == '\t') {
				k++
			}
			if k == len(rest) || bytes.HasPrefix(rest[k:], []byte("\r\n")) {
				// A delimiter line: the CRLF before it belongs to it.
				if partStart >= 0 {
					end := pos - 2
					if end < partStart {
						end = partStart
					}
					if np, ok := w.part(body[partStart:end], depth); ok {
						if !changed {
							out = make([]byte, 0, len(body)+len(body)/4)
							changed = true
						}
						out = append(out, body[copied:partStart]...)
						out = append(out, np...)
						copied = end
					}
				}
				if closing {
					break
				}
				lineEnd := pos + len(delim) + k + 2
				if lineEnd > len(body) {
					break
				}
				partStart = lineEnd
				pos = lineEnd
				continue
			}
		}
		nl := bytes.Index(body[pos:], []byte("\r\n"))
		if nl < 0 {
			break
		}
		pos += nl + 2
	}
	if !changed {
		return body, false
	}
	return append(out, body[copied:]...), true
}

// part rewrites one body part (its header and body).
func (w *walker) part(p []byte, depth int) ([]byte, bool) {
	var hlen int
	if bytes.HasPrefix(p, []byte("\r\n")) {
		hlen = 2
	} else if i := bytes.Index(p, []byte("\r\n\r\n")); i >= 0 {
		hlen = i + 4
	} else {
		return nil, false
	}
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(p[:hlen])))
	if err != nil {
		return nil, false
	}
	cte := h.Get("Content-Transfer-Encoding")
	nb, ok := w.entity(&h, p[hlen:], depth+1)
	if !ok {
		return nil, false
	}
	out := make([]byte, 0, hlen+len(nb)+64)
	if h.Get("Content-Transfer-Encoding") == cte {
		out = append(out, p[:hlen]...)
	} else {
		var hb bytes.Buffer
		if err := textproto.WriteHeader(&hb, h); err != nil {
			return nil, false
		}
		out = append(out, hb.Bytes()...)
	}
	return append(out, nb...), true
}
