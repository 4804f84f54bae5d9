package capture

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"html"
	"io"
	"mime"
	"net/textproto"
	"strings"

	"github.com/emersion/go-message"
	_ "github.com/emersion/go-message/charset" // decode non-UTF-8 parts
	"github.com/emersion/go-message/mail"
)

// maxPartBytes bounds one decoded text or HTML part kept for answers and
// search (bytes); the rest is cut.
const maxPartBytes = 4 << 20

// Attachment is one attachment (or inline part that is not the text or
// HTML body) of a captured message.
type Attachment struct {
	PartID      string `json:"part_id"`
	Filename    string `json:"filename"`
	ContentType string `json:"content_type"`
	Size        int    `json:"size"`
	SHA256      string `json:"sha256"`
	Inline      bool   `json:"inline"`
}

// Parsed is a captured message as parts.
type Parsed struct {
	Headers     map[string][]string `json:"headers"`
	Text        string              `json:"text"`
	HTML        string              `json:"html"`
	Attachments []Attachment        `json:"attachments"`
	// HasText and HasHTML report a text/plain or text/html body part.
	HasText bool `json:"-"`
	HasHTML bool `json:"-"`
	// Err is set when the message could not be parsed as MIME past some
	// point; what was read before is kept.
	Err string `json:"parse_error,omitempty"`
	// addrs holds the From, To and Cc fields as written (unfolded, RFC
	// 2047 words not decoded): an encoded display name may decode to a
	// comma or a quote, so addresses are read from these (Addresses).
	addrs map[string][]string
}

// Addresses returns the addresses of the From, To or Cc field (key in
// canonical form; the first field of that name), read as the mail
// parser reads the field as written (display names decoded per RFC
// 2047 within each address). A field that does not parse as written
// is read from its decoded text (Headers), as before; the error is
// that parse's.
func (p *Parsed) Addresses(key string) ([]*mail.Address, error) {
	if raw := p.addrs[key]; len(raw) > 0 {
		if l, err := firstAddressList(raw); err == nil {
			return l, nil
		}
	}
	return firstAddressList(p.Headers[key])
}

// firstAddressList is mail.Header.AddressList of a field whose values
// are vs: the first value's addresses; none when it is absent or empty.
// (Building a mail.Header for it would copy and sort every field, for
// each of From, To and Cc of every capture.)
func firstAddressList(vs []string) ([]*mail.Address, error) {
	if len(vs) == 0 || vs[0] == "" {
		return nil, nil
	}
	return mail.ParseAddressList(vs[0])
}

// keepAddr records the value v as written of field key when it is one
// Addresses reads.
func (p *Parsed) keepAddr(key, v string) {
	switch key {
	case "From", "To", "Cc":
		if p.addrs == nil {
			p.addrs = map[string][]string{}
		}
		p.addrs[key] = append(p.addrs[key], v)
	}
}

// Parse reads data (an RFC 5322 message) into its parts: headers
// (decoded), the first text/plain and text/html bodies (decoded to UTF-8,
// at most 4 MiB each) and every other leaf part as an attachment with its
// size and SHA-256 (of the decoded content). It never fails: a message it
// cannot read as MIME gets Err and what was read before.
func Parse(data []byte) *Parsed { return parse(data, true) }

// parse is Parse; without hashes, attachments are counted and sized but
// not hashed (a capture's summary needs only their number).
func parse(data []byte, hashes bool) *Parsed {
	p := &Parsed{Headers: map[string][]string{}, Attachments: []Attachment{}}
	e, err := message.Read(bytes.NewReader(data))
	if e == nil {
		p.Err = errString(err)
		return p
	}
	if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
		p.Err = err.Error()
	}
	fields := e.Header.Fields()
	for fields.Next() {
		v, err := fields.Text()
		if err != nil {
			v = fields.Value()
		}
		k := textproto.CanonicalMIMEHeaderKey(fields.Key())
		p.keepAddr(k, fields.Value())
		p.Headers[k] = append(p.Headers[k], v)
	}
	n := 0
	walkErr := e.Walk(func(path []int, part *message.Entity, err error) error {
		if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
			return err
		}
		if part.MultipartReader() != nil {
			return nil
		}
		n++
		ct, params, _ := part.Header.ContentType()
		if ct == "" {
			ct = "text/plain"
		}
		disp, dparams, _ := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
		isAttachment := disp == "attachment" || dparams["filename"] != "" || params["name"] != ""
		wanted := hashes || !isAttachment && (ct == "text/plain" && !p.HasText || ct == "text/html" && !p.HasHTML)
		var body []byte
		var size int64
		var rerr error
		if wanted {
			body, rerr = io.ReadAll(io.LimitReader(part.Body, 64<<20))
			size = int64(len(body))
		} else {
			// Sized, not kept.
			size, rerr = io.Copy(io.Discard, io.LimitReader(part.Body, 64<<20))
		}
		if rerr != nil && p.Err == "" {
			p.Err = rerr.Error()
		}
		switch {
		case ct == "text/plain" && !isAttachment && !p.HasText:
			p.HasText, p.Text = true, clip(body)
		case ct == "text/html" && !isAttachment && !p.HasHTML:
			p.HasHTML, p.HTML = true, clip(body)
		default:
			sha := ""
			if hashes {
				sum := sha256.Sum256(body)
				sha = hex.EncodeToString(sum[:])
			}
			name := dparams["filename"]
			if name == "" {
				name = params["name"]
			}
			if dec, derr := new(mime.WordDecoder).DecodeHeader(name); derr == nil {
				name = dec
			}
			p.Attachments = append(p.Attachments, Attachment{PartID: partID(path), Filename: name, ContentType: ct,
				Size: int(size), SHA256: sha, Inline: disp == "inline"})
		}
		return nil
	})
	if walkErr != nil && p.Err == "" {
		p.Err = walkErr.Error()
	}
	return p
}

func errString(err error) string {
	if err == nil {
		return "not a message"
	}
	return err.Error()
}

func clip(b []byte) string {
	if len(b) > maxPartBytes {
		b = b[:maxPartBytes]
	}
	return string(b)
}

// partID names a part by its position ("1.2"), as IMAP does.
func partID(path []int) string {
	if len(path) == 0 {
		return "1"
	}
	var sb strings.Builder
	for i, n := range path {
		if i > 0 {
			sb.WriteByte('.')
		}
		sb.WriteString(itoa(n + 1))
	}
	return sb.String()
}

func itoa(n int) string {
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}

// summaryFields are what a summary records of the header and body.
type summaryFields struct {
	from, subject, messageID string
	to, cc                   []string
	// text is the text part (or the HTML part's text when there is no
	// text part); quickParse's is a slice of the message.
	text        []byte
	attachments int
}

// parseSummary reads what a summary records of data: a message of one
// text/plain part that needs no decoding (most test and transactional
// mail sent as plain text) through quickParse, anything else through
// the MIME parser (parse), with the same result.
func parseSummary(data []byte) summaryFields {
	if f, ok := quickParse(data); ok {
		return f
	}
	return summaryOf(parse(data, false))
}

func summaryOf(p *Parsed) summaryFields {
	var h summaryHead
	for k, n := range summaryFieldNames[:hContentType] {
		if vs := p.Headers[n]; len(vs) > 0 {
			h.has[k], h.dec[k] = true, vs[0]
			if raw := p.addrs[n]; len(raw) > 0 {
				h.raw[k] = raw[0]
			}
		}
	}
	f := h.fields()
	f.text = []byte(p.Text)
	if !p.HasText && p.HasHTML {
		f.text = []byte(stripTags(p.HTML))
	}
	f.attachments = len(p.Attachments)
	return f
}

// summaryHead holds the first value of each field a summary reads (by
// hFrom … hMessageID): as written (raw: unfolded, RFC 2047 words not
// decoded; From, To and Cc) and decoded (dec), and whether it is there.
type summaryHead struct {
	has      [hContentType]bool
	raw, dec [hContentType]string
}

// fields is the summary's From (the first address, or the decoded
// field when it has none), To, Cc, Subject and Message-Id (without its
// angle brackets).
func (h *summaryHead) fields() summaryFields {
	var f summaryFields
	if l, err := h.addresses(hFrom); err == nil && len(l) > 0 {
		f.from = l[0]
	} else if h.has[hFrom] {
		f.from = h.dec[hFrom]
	}
	f.to, _ = h.addresses(hTo)
	f.cc, _ = h.addresses(hCc)
	f.subject = h.dec[hSubject]
	if h.has[hMessageID] {
		f.messageID = strings.Trim(strings.TrimSpace(h.dec[hMessageID]), "<>")
	}
	return f
}

// addresses is Parsed.Addresses(field k) as addresses only (never nil
// without an error): the field as written, or decoded when that does
// not parse. A field of plain addresses (simpleAddrs) skips the mail
// parser.
func (h *summaryHead) addresses(k int) ([]string, error) {
	if !h.has[k] {
		return []string{}, nil
	}
	if l, ok := simpleAddrs(h.raw[k]); ok {
		return l, nil
	}
	l, err := firstAddressList([]string{h.raw[k]})
	if err != nil {
		l, err = firstAddressList([]string{h.dec[k]})
	}
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(l))
	for _, a := range l {
		out = append(out, a.Address)
	}
	return out, nil
}

// simpleAddrs reads a field of plain addresses ("a@b.test",
// "<a@b.test>", comma-separated) as mail.ParseAddressList would, without
// it: ok is false for anything else (a display name, a comment, a
// quoted local part, a domain literal, an odd character), which is left
// to the mail parser.
func simpleAddrs(v string) (l []string, ok bool) {
	for {
		item, rest, more := strings.Cut(v, ",")
		item = strings.Trim(item, " \t")
		if len(item) > 2 && item[0] == '<' && item[len(item)-1] == '>' {
			item = item[1 : len(item)-1]
		}
		local, domain, found := strings.Cut(item, "@")
		if !found || !dotAtom(local) || !dotAtom(domain) {
			return nil, false
		}
		if l == nil {
			l = make([]string, 0, 1+strings.Count(rest, ","))
		}
		l = append(l, item)
		if !more {
			return l, true
		}
		v = rest
	}
}

// dotAtom reports whether s is letters, digits and "._+-", not empty,
// without a leading, trailing or doubled dot.
func dotAtom(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_', c == '+', c == '-':
		case c == '.' && s[i-1] != '.':
		default:
			return false
		}
	}
	return true
}

// stripTags is a rough HTML-to-text for search: it drops tags, then
// decodes character references (&amp;, &eacute;, &#8217;), a no-break
// space as a space (a phrase is searched with spaces).
func stripTags(s string) string {
	var sb strings.Builder
	in := false
	for _, r := range s {
		switch {
		case r == '<':
			in = true
		case r == '>':
			in = false
			sb.WriteByte(' ')
		case !in:
			sb.WriteRune(r)
		}
	}
	return strings.ReplaceAll(html.UnescapeString(sb.String()), "\u00a0", " ")
}
