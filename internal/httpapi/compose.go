package httpapi

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"mime"
	"sort"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"

	message "github.com/emersion/go-message"
)

// part is one node of the MIME tree: a leaf with a body, or a multipart
// with children.
type part struct {
	h    message.Header
	body []byte
	text string // leaf body when body is nil (avoids a copy of text parts)
	kids []*part
}

// header builds a header whose fields are written in the order given.
// (go-message writes fields in reverse order of Add.)
func header(kv ...string) message.Header {
	var h message.Header
	for i := len(kv) - 2; i >= 0; i -= 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

// boundary returns a random multipart boundary. math/rand/v2's global
// source is a per-process randomly seeded ChaCha8: unpredictable enough
// that text cannot collide with it by chance, and no syscall per part.
func boundary() string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:], rand.Uint64())
	return "=_" + hex.EncodeToString(b[:])
}

func multipart(subtype string, kids ...*part) *part {
	ct := mime.FormatMediaType("multipart/"+subtype, map[string]string{"boundary": boundary()})
	return &part{h: header("Content-Type", ct), kids: kids}
}

func textPart(subtype, s string) *part {
	return &part{
		h:    header("Content-Type", "text/"+subtype+"; charset=utf-8", "Content-Transfer-Encoding", "quoted-printable"),
		text: s,
	}
}

func attachmentPart(a *decodedAttachment) *part {
	params := map[string]string{}
	for k, v := range a.params {
		params[k] = v
	}
	disp := "attachment"
	if a.contentID != "" {
		disp = "inline"
	}
	dparams := map[string]string{}
	if a.filename != "" {
		params["name"] = a.filename
		dparams["filename"] = a.filename
	}
	ct := mime.FormatMediaType(a.contentType, params)
	if ct == "" { // unreachable after validation; keep the message well-formed
		ct = "application/octet-stream"
	}
	cd := mime.FormatMediaType(disp, dparams)
	kv := []string{"Content-Type", ct, "Content-Disposition", cd, "Content-Transfer-Encoding", "base64"}
	if a.contentID != "" {
		kv = append(kv, "Content-Id", "<"+a.contentID+">")
	}
	return &part{h: header(kv...), body: a.data}
}

// bodyTree builds the MIME structure of a message:
//
//	text only              text/plain
//	html only              text/html
//	text and html          multipart/alternative (text, html)
//	inline attachments     the html part (else the text part) becomes
//	                       multipart/related (html, inline parts...)
//	other attachments      multipart/mixed (the above, attachments...)
func bodyTree(v *validMessage) *part {
	m := v.req
	var inline, attached []*part
	for i := range v.atts {
		p := attachmentPart(&v.atts[i])
		if v.atts[i].contentID != "" {
			inline = append(inline, p)
		} else {
			attached = append(attached, p)
		}
	}
	related := func(p *part) *part {
		if len(inline) == 0 {
			return p
		}
		return multipart("related", append([]*part{p}, inline...)...)
	}
	var body *part
	switch {
	case m.Text != "" && m.HTML != "":
		body = multipart("alternative", textPart("plain", m.Text), related(textPart("html", m.HTML)))
	case m.HTML != "":
		body = related(textPart("html", m.HTML))
	default:
		body = related(textPart("plain", m.Text))
	}
	if len(attached) > 0 {
		body = multipart("mixed", append([]*part{body}, attached...)...)
	}
	return body
}

// encodeText returns s as is when it is ASCII, else as RFC 2047
// Q-encoded words (which fold at their spaces).
func encodeText(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return mime.QEncoding.Encode("utf-8", s)
		}
	}
	return s
}

func addressList(l []address) string {
	var b strings.Builder
	for i, a := range l {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(a.header())
	}
	return b.String()
}

// compose writes the RFC 5322 message for v to buf: CRLF line endings,
// header lines folded at 78 and never longer than 998 octets, text parts
// in quoted-printable, attachments in base64. msgID is the relay's
// message id; the Message-ID field is <msgID@hostname>. It returns the
// message's header and the offset of the body in buf.
func compose(buf *bytes.Buffer, v *validMessage, msgID, hostname string, now time.Time) (message.Header, int, error) {
	m := v.req
	kv := make([]string, 0, 24+2*len(v.headers))
	kv = append(kv, "From", v.from.header())
	if len(v.replyTo) > 0 {
		kv = append(kv, "Reply-To", addressList(v.replyTo))
	}
	switch {
	case len(v.to) > 0:
		kv = append(kv, "To", addressList(v.to))
	case len(v.cc) == 0:
		kv = append(kv, "To", "undisclosed-recipients:;")
	}
	if len(v.cc) > 0 {
		kv = append(kv, "Cc", addressList(v.cc))
	}
	kv = append(kv,
		"Subject", encodeText(m.Subject),
		"Date", now.Format(time.RFC1123Z),
		"Message-Id", "<"+msgID+"@"+hostname+">",
		"MIME-Version", "1.0",
	)
	hs := v.headers
	sort.Slice(hs, func(i, j int) bool { return hs[i].k < hs[j].k })
	for _, h := range hs {
		kv = append(kv, h.k, encodeText(h.v))
	}
	root := bodyTree(v)
	// The root part's own fields (Content-Type, Content-Transfer-Encoding)
	// go last in the message header.
	for f := root.h.Fields(); f.Next(); {
		kv = append(kv, f.Key(), f.Value())
	}
	// The message header is formatted once, here: as raw fields it is
	// written as is by CreateWriter and again by the relay (msg.Bytes).
	raw := make([]byte, 0, 64*len(kv))
	ends := make([]int, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		raw = appendField(raw, kv[i], kv[i+1])
		ends = append(ends, len(raw))
	}
	var h message.Header
	for i := len(ends) - 1; i >= 0; i-- {
		start := 0
		if i > 0 {
			start = ends[i-1]
		}
		h.AddRaw(raw[start:ends[i]:ends[i]])
	}
	buf.Grow(len(raw) + 2 + estimateBody(v))
	start := buf.Len()
	// The header goes out as message.CreateWriter would write h (its raw
	// fields in order, MIME-Version and the boundary already there, then
	// an empty line), without its copy of h.
	buf.Write(raw)
	buf.WriteString("\r\n")
	body := buf.Len() - start
	if root.kids == nil && root.body == nil {
		// A single text part: quoted-printable straight into buf.
		buf.Write(appendQP(buf.AvailableBuffer(), root.text))
		return h, body, nil
	}
	// The body's writer is made from the root part's own fields (the same
	// Content-Type and Content-Transfer-Encoding as in h); what it would
	// write of them is discarded.
	sw := &switchWriter{w: io.Discard}
	w, err := message.CreateWriter(sw, root.h)
	if err != nil {
		return h, 0, err
	}
	sw.w = buf
	return h, body, writePart(w, root)
}

// switchWriter writes to w, which can be changed.
type switchWriter struct{ w io.Writer }

func (s *switchWriter) Write(p []byte) (int, error) { return s.w.Write(p) }

// appendQP appends s to dst in quoted-printable exactly as
// mime/quotedprintable.Writer writes it (Binary false, then Close): lines
// of at most 76 octets with soft breaks, CR, LF and CRLF as CRLF, white
// space before a line break encoded. It is that Writer's state machine,
// working on whole runs of plain bytes instead of byte by byte.
func appendQP(dst []byte, s string) []byte {
	const max = 76
	ls := len(dst) // start of the current line in dst
	cr := false
	encode := func(b byte) {
		if max-1-(len(dst)-ls) < 3 {
			dst = append(dst, '=', '\r', '\n')
			ls = len(dst)
		}
		dst = append(dst, '=', upperhex[b>>4], upperhex[b&0x0f])
	}
	checkLast := func() {
		if n := len(dst) - ls; n > 0 {
			if b := dst[len(dst)-1]; b == ' ' || b == '\t' {
				dst = dst[:len(dst)-1]
				encode(b)
			}
		}
	}
	for i := 0; i < len(s); {
		b := s[i]
		switch {
		case b == '\n' || b == '\r':
			i++
			if cr && b == '\n' {
				cr = false
				continue
			}
			if b == '\r' {
				cr = true
			}
			checkLast()
			dst = append(dst, '\r', '\n')
			ls = len(dst)
		case b >= '!' && b <= '~' && b != '=' || b == ' ' || b == '\t':
			// A run of plain bytes, up to the line's room.
			if len(dst)-ls == max-1 {
				dst = append(dst, '=', '\r', '\n')
				ls = len(dst)
			}
			j, room := i+1, max-1-(len(dst)-ls)
			for j < len(s) && j-i < room {
				c := s[j]
				if !(c >= '!' && c <= '~' && c != '=' || c == ' ' || c == '\t') {
					break
				}
				j++
			}
			dst = append(dst, s[i:j]...)
			i = j
			cr = false
		default:
			encode(b)
			i++
		}
	}
	checkLast()
	return dst
}

const upperhex = "0123456789ABCDEF"

// appendField appends the header field "k: v" CRLF to dst, folded
// before a space or tab where a line would pass 78 octets (the space after
// the colon counts: a long first word moves to a line of its own, which
// keeps encoded-words within RFC 2047's 76). v has no CR or LF
// (validated); values and addresses are at most 900 octets between
// spaces, so no line can pass 998. A fold never leaves a line of only
// white space.
func appendField(dst []byte, k, v string) []byte {
	dst = append(dst, k...)
	dst = append(dst, ':')
	line := len(k) + 1
	first := true
	for first || len(v) > 0 {
		var seg string
		if first {
			// The space after the colon starts the first segment.
			n := len(v)
			if i := strings.IndexAny(v, " \t"); i >= 0 {
				n = i
			}
			seg, v = v[:n], v[n:]
			if line+1+len(seg) > 78 && len(seg) > 0 {
				dst = append(dst, '\r', '\n')
				line = 0
			}
			dst = append(dst, ' ')
			line++
			first = false
		} else {
			// A segment is a run of white space and the word after it;
			// folding before it never leaves white space at a line's end
			// or a line of only white space.
			w := 0
			for w < len(v) && (v[w] == ' ' || v[w] == '\t') {
				w++
			}
			n := len(v)
			if i := strings.IndexAny(v[w:], " \t"); i >= 0 {
				n = w + i
			}
			seg, v = v[:n], v[n:]
			if line+len(seg) > 78 && w < len(seg) {
				dst = append(dst, '\r', '\n')
				line = 0
			}
		}
		dst = append(dst, seg...)
		line += len(seg)
	}
	return append(dst, '\r', '\n')
}

// estimateBody is about the encoded size of the body, to size the buffer
// once.
func estimateBody(v *validMessage) int {
	n := 512 + len(v.req.Text)*11/10 + len(v.req.HTML)*11/10
	for i := range v.atts {
		n += 256 + len(v.atts[i].data)*138/100
	}
	return n
}

// bytesOf returns the bytes of s without a copy. The caller must only
// read them (the encoders and normalizeRaw do).
func bytesOf(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

func writePart(w *message.Writer, p *part) error {
	if p.kids == nil {
		var err error
		if p.body != nil {
			_, err = w.Write(p.body)
		} else {
			_, err = w.Write(bytesOf(p.text))
		}
		if err != nil {
			return err
		}
		return w.Close()
	}
	for _, k := range p.kids {
		cw, err := w.CreatePart(k.h)
		if err != nil {
			return err
		}
		if err := writePart(cw, k); err != nil {
			return err
		}
	}
	return w.Close()
}
