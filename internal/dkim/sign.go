package dkim

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	stdtextproto "net/textproto"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-message/textproto"
	msgauth "github.com/emersion/go-msgauth/dkim"
)

// DefaultHeaders are the fields signed when present (RFC 6376 section
// 5.4.1's recommendation, plus the List-Unsubscribe-Post of RFC 8058).
var DefaultHeaders = []string{
	"From", "Reply-To", "Subject", "Date", "To", "Cc", "Message-ID",
	"In-Reply-To", "References", "Sender", "MIME-Version", "Content-Type",
	"Content-Transfer-Encoding", "Resent-Date", "Resent-From", "Resent-To", "Resent-Cc",
	"List-Id", "List-Help", "List-Unsubscribe", "List-Unsubscribe-Post", "List-Subscribe",
	"List-Post", "List-Owner", "List-Archive",
}

// DefaultOversign are the fields signed once more than they occur (RFC
// 6376 section 8.15), so a copy added after signing, such as a second
// From, breaks the signature.
var DefaultOversign = []string{"From", "To", "Subject", "Date", "Message-ID"}

// Options say how to sign. The zero Options signs DefaultHeaders,
// over-signs DefaultOversign, relaxed/relaxed, without expiry.
type Options struct {
	Headers  []string // fields signed when present; nil: DefaultHeaders
	Oversign []string // fields signed once more than present; nil: DefaultOversign
	// HeaderCanon and BodyCanon are "relaxed" or "simple" (RFC 6376
	// section 3.4); "" is relaxed.
	HeaderCanon, BodyCanon string
	// Expiration, when positive, sets x= that long after signing.
	Expiration time.Duration

	// plan is the lists deduplicated, made on first use: set the lists
	// before signing, and do not copy Options after.
	plan atomic.Pointer[headerPlan]
}

// headerPlan is Options' lists as h= is built from them: each name once
// (From first, then Headers, then Oversign) with whether it is
// over-signed, and an index by canonical MIME key, the form textproto
// keeps field names in.
type headerPlan struct {
	names []string
	over  []bool
	index map[string]int
}

func (o *Options) getPlan() *headerPlan {
	if p := o.plan.Load(); p != nil {
		return p
	}
	headers, over := o.Headers, o.Oversign
	if headers == nil {
		headers = DefaultHeaders
	}
	if over == nil {
		over = DefaultOversign
	}
	p := &headerPlan{index: map[string]int{}}
	for _, l := range [][]string{{"From"}, headers, over} {
		for _, k := range l {
			ck := stdtextproto.CanonicalMIMEHeaderKey(k)
			if _, dup := p.index[ck]; dup {
				continue
			}
			p.index[ck] = len(p.names)
			p.names = append(p.names, k)
			p.over = append(p.over, containsFold(over, k))
		}
	}
	o.plan.Store(p)
	return p
}

// Check validates o's canonicalizations.
func (o *Options) Check() error {
	for _, c := range []string{o.HeaderCanon, o.BodyCanon} {
		switch c {
		case "", string(msgauth.CanonicalizationRelaxed), string(msgauth.CanonicalizationSimple):
		default:
			return fmt.Errorf("canonicalization %q: want relaxed or simple", c)
		}
	}
	return nil
}

func canon(c string) msgauth.Canonicalization {
	if c == "" {
		return msgauth.CanonicalizationRelaxed
	}
	return msgauth.Canonicalization(c)
}

// HeaderKeys is the h= list for a message with header h: each field of
// o's lists as many times as it occurs (none if absent), and each
// over-signed field once more. From is always included.
func (o *Options) HeaderKeys(h *textproto.Header) []string {
	return o.headerKeys(fieldsOf(h))
}

// field is one header field: its name and its bytes as written.
type field struct {
	name string
	raw  []byte
}

// fieldsOf lists h's fields top to bottom, raw as textproto.WriteHeader
// writes them (a field without raw bytes fails there too: raw is nil).
func fieldsOf(h *textproto.Header) []field {
	fs := make([]field, 0, h.Len())
	for it := h.Fields(); it.Next(); {
		raw, _ := it.Raw()
		fs = append(fs, field{it.Key(), raw})
	}
	return fs
}

// headerKeys is HeaderKeys over fs: one map lookup per field.
func (o *Options) headerKeys(fs []field) []string {
	p := o.getPlan()
	var countBuf [64]int
	counts := countBuf[:0]
	if len(p.names) <= len(countBuf) {
		counts = countBuf[:len(p.names)]
	} else {
		counts = make([]int, len(p.names))
	}
	for i := range fs {
		if j, ok := p.index[fs[i].name]; ok { // textproto keeps names canonical
			counts[j]++
		}
	}
	keys := make([]string, 0, 16)
	for j, k := range p.names {
		n := counts[j]
		if p.over[j] {
			n++
		}
		for ; n > 0; n-- {
			keys = append(keys, k)
		}
	}
	return keys
}

// containsFold reports whether l holds s, ignoring ASCII case.
func containsFold(l []string, s string) bool {
	for _, x := range l {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

// Sign computes one DKIM-Signature field per key (in order) over the
// message whose header is h and whose body (the bytes after the empty
// line) is body. Each field is returned whole: "DKIM-Signature: ...\r\n",
// folded, to prepend as is. Errors are the key's or the header's (a field
// that cannot be written). Safe for concurrent use with distinct h.
//
// The hashes are computed here, in one pass over the header fields and the
// body already in memory (RFC 6376 sections 3.4 and 3.7); only the private
// key operation is the key's crypto.Signer. go-msgauth's Signer would
// re-read the whole message through an io.Pipe and a goroutine and
// re-parse its header for every key; its Verifier checks what this makes
// (dkim_test.go).
func Sign(keys []*Key, o *Options, h *textproto.Header, body []byte) ([]string, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	hc, bc := canon(o.HeaderCanon), canon(o.BodyCanon)
	fs := fieldsOf(h)
	hk := o.headerKeys(fs)
	// The body hash is the same for every key.
	bh := bodyHash(body, bc == msgauth.CanonicalizationRelaxed)
	// The canonical signed header fields, in h= order, are too.
	signedHdr, err := canonicalHeader(fs, hk, hc == msgauth.CanonicalizationRelaxed)
	if err != nil {
		return nil, fmt.Errorf("dkim: %w", err)
	}
	t := time.Now()
	var exp time.Time
	if o.Expiration > 0 {
		exp = t.Add(o.Expiration)
	}
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		f, err := signOne(k, hk, string(hc)+"/"+string(bc), bh, signedHdr, hc == msgauth.CanonicalizationRelaxed, t, exp)
		if err != nil {
			return nil, fmt.Errorf("dkim %s: %w", RecordName(k.Domain, k.Selector), err)
		}
		out = append(out, f)
	}
	return out, nil
}

// signOne makes k's DKIM-Signature field: the tags, then b= over the
// signed header fields and the field itself with b= empty (RFC 6376
// section 3.7), laid out as go-msgauth lays it out.
func signOne(k *Key, hk []string, c string, bh string, signedHdr []byte, relaxed bool, t, exp time.Time) (string, error) {
	var algo string
	var hash crypto.Hash
	switch k.Signer.Public().(type) {
	case *rsa.PublicKey:
		algo, hash = "rsa-sha256", crypto.SHA256
	case ed25519.PublicKey:
		algo = "ed25519-sha256" // RFC 8463: Ed25519 signs the SHA-256 digest as its message
	default:
		return "", fmt.Errorf("unsupported key algorithm %T", k.Signer.Public())
	}
	if k.Domain == "" || k.Selector == "" {
		return "", fmt.Errorf("no domain or selector")
	}
	// Tags in go-msgauth's order (sorted by name, b= last).
	tags := [][2]string{
		{"a", algo}, {"bh", bh}, {"c", c}, {"d", k.Domain},
		{"h", strings.Join(hk, ":")}, {"s", k.Selector},
		{"t", strconv.FormatInt(t.Unix(), 10)}, {"v", "1"},
	}
	if !exp.IsZero() {
		tags = append(tags, [2]string{"x", strconv.FormatInt(exp.Unix(), 10)})
	}
	var f strings.Builder
	f.Grow(512)
	f.WriteString("DKIM-Signature:")
	line := 0
	for _, tv := range tags {
		if 3+line+len(tv[0])+len(tv[1]) > 75 {
			f.WriteString("\r\n")
			line = 0
		}
		f.WriteString(" ")
		f.WriteString(tv[0])
		f.WriteString("=")
		if tv[0] == "h" && 3+len(tv[0])+len(tv[1]) > 75 {
			line = writeFoldedList(&f, hk, 2+len(tv[0]))
			continue
		}
		f.WriteString(tv[1])
		f.WriteString(";")
		line += 3 + len(tv[0]) + len(tv[1])
	}
	f.WriteString("\r\n b=")
	unsigned := f.String()

	d := sha256.New()
	d.Write(signedHdr)
	if relaxed {
		d.Write(relaxedField(nil, []byte(unsigned), false))
	} else {
		d.Write([]byte(unsigned))
	}
	sum := d.Sum(nil)
	sig, err := k.Signer.Sign(rand.Reader, sum, hash)
	if err != nil {
		return "", err
	}
	// b= folded in 75-byte lines, the first starting with " b=".
	b := " b=" + base64.StdEncoding.EncodeToString(sig)
	f.Reset()
	f.Grow(len(unsigned) + len(b) + len(b)/75*3 + 2)
	f.WriteString(unsigned[:len(unsigned)-len(" b=")])
	for len(b) > 75 {
		f.WriteString(b[:75])
		f.WriteString("\r\n ")
		b = b[75:]
	}
	f.WriteString(b)
	f.WriteString("\r\n")
	return f.String(), nil
}

// writeFoldedList writes names joined by ':' and a final ';' as the
// value of a tag that starts col characters into its line, folding after
// a colon (RFC 6376 section 3.5: FWS may surround the colons of h=) so
// that each line stays within 78 characters (RFC 5322 section 2.1.1; a
// name longer than that gets a line of its own). It returns the length
// of the last line. Without it a
// message with many signed fields (hundreds of To fields) made an h=
// line longer than the 998 characters RFC 5322 allows.
func writeFoldedList(f *strings.Builder, names []string, col int) int {
	for i, k := range names {
		n := len(k) + 1 // the ':' or ';' after it
		if i > 0 && col+n > 78 {
			f.WriteString("\r\n ")
			col = 1
		}
		f.WriteString(k)
		if i < len(names)-1 {
			f.WriteByte(':')
		} else {
			f.WriteByte(';')
		}
		col += n
	}
	return col
}

// canonicalHeader is the fields hk names, canonicalized and concatenated
// in h= order; the n-th occurrence of a name in hk picks the n-th field of
// that name from the bottom, and a name listed more often than present
// (over-signing) picks nothing (RFC 6376 section 5.4.2).
func canonicalHeader(fs []field, hk []string, relaxed bool) ([]byte, error) {
	out := make([]byte, 0, 1024)
	for i, k := range hk {
		n := 0 // earlier occurrences of k in h=
		for _, e := range hk[:i] {
			if strings.EqualFold(e, k) {
				n++
			}
		}
		var raw []byte
		found := false
		for j := len(fs) - 1; j >= 0; j-- {
			if strings.EqualFold(fs[j].name, k) {
				if n == 0 {
					raw, found = fs[j].raw, true
					break
				}
				n--
			}
		}
		if !found {
			continue
		}
		if raw == nil {
			return nil, fmt.Errorf("header field %s cannot be written", k)
		}
		if relaxed {
			out = relaxedField(out, raw, true)
		} else {
			out = appendCRLFFixed(out, raw)
		}
	}
	return out, nil
}

// relaxedField appends field (name: value, folded or not) in the relaxed
// header canonicalization (RFC 6376 section 3.4.2): name lower-case,
// unfolded, runs of white space as one space, none around the colon or at
// the end; then CRLF if crlf.
func relaxedField(out, field []byte, crlf bool) []byte {
	colon := bytes.IndexByte(field, ':')
	name, value := field, []byte(nil)
	if colon >= 0 {
		name, value = field[:colon], field[colon+1:]
	}
	for _, c := range bytes.TrimSpace(name) {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		out = append(out, c)
	}
	out = append(out, ':')
	space, any := false, false
	for _, c := range value {
		switch c {
		case ' ', '\t', '\r', '\n':
			space = true
		default:
			if space && any {
				out = append(out, ' ')
			}
			space, any = false, true
			out = append(out, c)
		}
	}
	if crlf {
		out = append(out, '\r', '\n')
	}
	return out
}

// appendCRLFFixed appends b with each LF not after a CR made CRLF.
func appendCRLFFixed(out, b []byte) []byte {
	for i, c := range b {
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			out = append(out, '\r')
		}
		out = append(out, c)
	}
	return out
}

// bodyHash is bh=: the base64 SHA-256 of body in the simple or relaxed
// body canonicalization (RFC 6376 sections 3.4.3 and 3.4.4), a lone LF
// counted as CRLF, as go-msgauth's canonicalizers compute it.
func bodyHash(body []byte, relaxed bool) string {
	d := sha256.New()
	var buf [4096]byte
	out := buf[:0]
	if relaxed {
		// White space runs become one space and vanish at line ends;
		// line breaks are kept only if something follows them (pend:
		// where the trailing ones begin in out); a non-empty body ends
		// in CRLF, an empty one hashes nothing.
		pend, wsp, prevCR, written := -1, false, false, false
		for _, c := range body {
			switch c {
			case ' ', '\t':
				wsp, prevCR = true, false
				continue
			case '\r', '\n':
				wsp = false
				if pend < 0 {
					pend = len(out)
				}
				if c == '\n' && !prevCR {
					out = append(out, '\r')
				}
				out = append(out, c)
				prevCR = c == '\r'
				continue
			}
			prevCR = false
			if wsp {
				out = append(out, ' ')
				wsp = false
			}
			out = append(out, c)
			pend, written = -1, true
			if len(out) >= len(buf)-2 {
				d.Write(out)
				out = buf[:0]
			}
		}
		if pend >= 0 {
			out = out[:pend]
		}
		d.Write(out)
		if written {
			d.Write([]byte("\r\n"))
		}
	} else {
		// Lone LFs become CRLF; the line breaks at the end go and one
		// CRLF ends the body (an empty body is just CRLF).
		end := len(body)
		for end > 0 && body[end-1] == '\n' {
			end--
			if end > 0 && body[end-1] == '\r' {
				end--
			}
		}
		for i, c := range body[:end] {
			if c == '\n' && (i == 0 || body[i-1] != '\r') {
				out = append(out, '\r')
			}
			out = append(out, c)
			if len(out) >= len(buf)-2 {
				d.Write(out)
				out = buf[:0]
			}
		}
		d.Write(out)
		d.Write([]byte("\r\n"))
	}
	return base64.StdEncoding.EncodeToString(d.Sum(nil))
}
