package httpapi

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"path"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"

	gomail "github.com/emersion/go-message/mail"

	"github.com/sluice-mta/sluice/pipeline"
)

// Limits on a message request. They are documented in docs/http-api.md
// and the OpenAPI document.
const (
	maxRecipients     = 1000 // to + cc + bcc, after removing duplicates
	maxBatch          = 500  // messages in one batch request
	maxHeaders        = 50   // custom headers
	maxHeaderValue    = 900  // bytes of a custom header value or the subject
	maxHeaderName     = 76
	maxAttachments    = 100
	maxTags           = 32
	maxTagLen         = 128
	maxMetadata       = 64
	maxMetaKeyLen     = 128
	maxMetaValueLen   = 2048
	maxFilenameLen    = 255
	maxContentIDLen   = 250
	maxIdempotencyKey = 255
	maxLineLen        = 998 // RFC 5322, without CRLF
)

// addrList is a JSON string or a list of strings.
type addrList []string

func (a *addrList) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case bytes.Equal(b, []byte("null")):
		*a = nil
		return nil
	case len(b) > 0 && b[0] == '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*a = addrList{s}
		return nil
	}
	var l []string
	if err := json.Unmarshal(b, &l); err != nil {
		return &json.UnmarshalTypeError{Value: jsonKind(b), Type: reflect.TypeFor[addrList]()}
	}
	*a = l
	return nil
}

func jsonKind(b []byte) string {
	if len(b) == 0 {
		return "nothing"
	}
	switch b[0] {
	case '{':
		return "object"
	case '[':
		return "array with a non-string"
	case 't', 'f':
		return "bool"
	}
	return "number"
}

// messageRequest is the body of POST /v1/messages and each item of a batch.
type messageRequest struct {
	From        string            `json:"from"`
	To          addrList          `json:"to"`
	Cc          addrList          `json:"cc"`
	Bcc         addrList          `json:"bcc"`
	ReplyTo     addrList          `json:"reply_to"`
	Subject     string            `json:"subject"`
	Text        string            `json:"text"`
	HTML        string            `json:"html"`
	Headers     map[string]string `json:"headers"`
	Attachments []attachment      `json:"attachments"`
	Tags        []string          `json:"tags"`
	Metadata    map[string]string `json:"metadata"`
	// Engagement tracking (docs/tracking.md): nil leaves the tenant's
	// default; false opts this message out whatever the default.
	TrackOpens      *bool `json:"track_opens"`
	TrackClicks     *bool `json:"track_clicks"`
	ListUnsubscribe *bool `json:"list_unsubscribe"`
	// RequireTLS sends the message with REQUIRETLS (RFC 8689): delivered
	// only over TLS that a policy validated, or bounced
	// (docs/delivery.md). Stages see it and may change it.
	RequireTLS bool `json:"require_tls"`
}

// track is the message's tracking request, or nil when it asks nothing.
func (m *messageRequest) track() *pipeline.Track {
	if m.TrackOpens == nil && m.TrackClicks == nil && m.ListUnsubscribe == nil {
		return nil
	}
	return &pipeline.Track{Opens: m.TrackOpens, Clicks: m.TrackClicks, Unsubscribe: m.ListUnsubscribe}
}

type attachment struct {
	Filename    string `json:"filename"`
	ContentType string `json:"content_type"`
	Content     string `json:"content"`
	Encoding    string `json:"encoding"` // "base64" (the default) is the only one
	ContentID   string `json:"content_id"`
}

// rawRequest is the body of POST /v1/messages/raw.
type rawRequest struct {
	From          string            `json:"from"`
	To            addrList          `json:"to"`
	Message       *string           `json:"message"`
	MessageBase64 *string           `json:"message_base64"`
	Tags          []string          `json:"tags"`
	Metadata      map[string]string `json:"metadata"`
	RequireTLS    bool              `json:"require_tls"` // as messageRequest's
}

// batchRequest is the body of POST /v1/messages/batch.
type batchRequest struct {
	Messages []messageRequest `json:"messages"`
}

// decoder is a json.Decoder (with DisallowUnknownFields) that is reused:
// a Decoder copies its input into a buffer of its own, grown from 512
// bytes by doubling, which would be most of a small request's garbage.
type decoder struct {
	rd  bytes.Reader
	dec *json.Decoder
}

const (
	freeDecoders   = 128
	maxPooledInput = 64 << 10
)

var decFree = make(chan *decoder, freeDecoders)

// decodeJSON decodes body into v: unknown fields, trailing data and
// type mismatches are 400s naming the field.
func decodeJSON(body []byte, v any) *apiError {
	if len(bytes.TrimSpace(body)) == 0 {
		return errf(http.StatusBadRequest, codeInvalidJSON, "", "the request body is empty")
	}
	if e := checkBody(body, v); e != nil {
		return e
	}
	if fastDecode(body, v) {
		return nil
	}
	resetRequest(v)
	var d *decoder
	select {
	case d = <-decFree:
	default:
		d = &decoder{}
		d.dec = json.NewDecoder(&d.rd)
		d.dec.DisallowUnknownFields()
	}
	d.rd.Reset(body)
	start := d.dec.InputOffset()
	err := d.dec.Decode(v)
	used := d.dec.InputOffset() - start
	// Reuse the decoder only when it holds nothing of this body: what it
	// buffered beyond the value is white space, and it read everything.
	if err == nil && len(body) <= maxPooledInput && d.rd.Len() == 0 {
		if rest, _ := io.ReadAll(d.dec.Buffered()); len(bytes.TrimSpace(rest)) == 0 {
			select {
			case decFree <- d:
			default:
			}
		}
	}
	if err != nil {
		if _, ok := v.(*batchRequest); ok {
			if e := batchItemError(body); e != nil {
				return e
			}
		}
		return jsonError(err)
	}
	if rest := body[used:]; len(bytes.TrimSpace(rest)) != 0 {
		return errf(http.StatusBadRequest, codeInvalidJSON, "", "unexpected data after the JSON object at byte %d", used)
	}
	return nil
}

// resetRequest zeroes what fastDecode may have half filled before it
// gave up.
func resetRequest(v any) {
	switch t := v.(type) {
	case *messageRequest:
		*t = messageRequest{}
	case *batchRequest:
		*t = batchRequest{}
	}
}

func jsonError(err error) *apiError {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return errf(http.StatusBadRequest, codeInvalidJSON, "", "invalid JSON at byte %d: %s", se.Offset, strings.TrimPrefix(se.Error(), "json: "))
	case errors.As(err, &te):
		field := te.Field
		if field == "" {
			return errf(http.StatusBadRequest, codeInvalidJSON, "", "the request body must be a JSON object")
		}
		return badField(field, "%s must be a %s, not %s", field, jsonTypeName(te.Type), te.Value)
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		return errf(http.StatusBadRequest, codeInvalidJSON, "", "the JSON is truncated")
	}
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, `json: unknown field "`); ok {
		name = strings.TrimSuffix(name, `"`)
		return errf(http.StatusBadRequest, codeUnknownField, name, "unknown field %q", name)
	}
	return errf(http.StatusBadRequest, codeInvalidJSON, "", "%s", strings.TrimPrefix(msg, "json: "))
}

func jsonTypeName(t reflect.Type) string {
	if t == nil {
		return "value"
	}
	s := t.String()
	switch {
	case t == reflect.TypeFor[addrList]():
		return "string or array of strings"
	case s == "string":
		return "string"
	case strings.HasPrefix(s, "[]"):
		return "array"
	case strings.HasPrefix(s, "map["), strings.HasPrefix(s, "httpapi."):
		return "object"
	case strings.HasPrefix(s, "int"), strings.HasPrefix(s, "float"):
		return "number"
	}
	return s
}

// ---- validation helpers ----

// checkText rejects CR, LF and other control characters (TAB is allowed)
// in a value that goes into a header, and invalid UTF-8.
func checkText(field, v string) *apiError {
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '\r' || c == '\n':
			return badField(field, "%s must not contain CR or LF", field)
		case c < 0x20 && c != '\t' || c == 0x7f:
			return badField(field, "%s must not contain control characters", field)
		}
	}
	if !utf8.ValidString(v) {
		return badField(field, "%s is not valid UTF-8", field)
	}
	return nil
}

var wordDecoder = &mime.WordDecoder{CharsetReader: func(charset string, r io.Reader) (io.Reader, error) {
	return nil, fmt.Errorf("unsupported charset %q", charset)
}}

// checkHeaderValue is checkText plus: RFC 2047 encoded-words in v must
// decode to text without CR, LF or control characters (a header that
// says "=?utf-8?q?a=0D=0Ab?=" is refused, as CR LF would be).
func checkHeaderValue(field, v string) *apiError {
	if e := checkText(field, v); e != nil {
		return e
	}
	if !strings.Contains(v, "=?") {
		return nil
	}
	dec, err := wordDecoder.DecodeHeader(v)
	if err != nil {
		if strings.Contains(err.Error(), "unsupported charset") {
			return badField(field, "%s has an encoded-word in a charset other than UTF-8, US-ASCII or ISO-8859-1; send the text as UTF-8 instead", field)
		}
		return nil // a malformed encoded-word is shown literally by readers
	}
	if e := checkText(field, dec); e != nil {
		e.Message = field + " has an encoded-word that decodes to CR, LF or a control character"
		return e
	}
	return nil
}

// address is one parsed address.
type address struct {
	Name string // display name, decoded
	Addr string // local@domain
}

func (a address) header() string {
	return (&gomail.Address{Name: a.Name, Address: a.Addr}).String()
}

// parseAddresses parses "a@x", "Bob <b@x>" or a comma-separated list of
// them, with the field name for errors.
func parseAddresses(field, v string) ([]address, *apiError) {
	if strings.TrimSpace(v) == "" {
		return nil, badField(field, "%s is empty", field)
	}
	if len(v) > maxHeaderValue {
		return nil, badField(field, "%s is longer than %d bytes", field, maxHeaderValue)
	}
	if e := checkHeaderValue(field, v); e != nil {
		return nil, e
	}
	list, err := gomail.ParseAddressList(v)
	if err != nil || len(list) == 0 {
		return nil, badField(field, "%s is not a valid address: %q", field, v)
	}
	out := make([]address, 0, len(list))
	for _, a := range list {
		if e := checkText(field, a.Name); e != nil {
			e.Message = field + " has a display name with CR, LF or a control character"
			return nil, e
		}
		if _, err := pipeline.ParseSender(canonicalAddr(a.Address)); err != nil {
			return nil, badField(field, "%s is not a valid address: %q (%s)", field, a.Address, pipeline.Reply(err).Message)
		}
		out = append(out, address{Name: a.Name, Addr: a.Address})
	}
	return out, nil
}

func parseOneAddress(field, v string) (address, *apiError) {
	l, e := parseAddresses(field, v)
	if e != nil {
		return address{}, e
	}
	if len(l) != 1 {
		return address{}, badField(field, "%s must be a single address", field)
	}
	return l[0], nil
}

// envelopeAddr parses an envelope address: a bare address or one with a
// display name (which is dropped). It returns the RFC 5321 canonical form
// (pipeline.ParseAddress), the one the SMTP source gives the relay.
func envelopeAddr(field, v string) (string, *apiError) {
	a, e := parseOneAddress(field, v)
	if e != nil {
		return "", e
	}
	return canonicalAddr(a.Addr), nil
}

// canonicalAddr turns an address from the RFC 5322 parser, which removes
// the quotes of a local part ("odd user"@x gives odd user@x), back into
// the canonical form: a domain holds no '@', so the local part is
// everything before the last one.
func canonicalAddr(a string) string {
	at := strings.LastIndexByte(a, '@')
	if at < 0 {
		return a
	}
	return pipeline.JoinAddress(a[:at], a[at+1:])
}

func idx(field string, i int) string { return field + "[" + strconv.Itoa(i) + "]" }

// checkTagsMeta validates tags and metadata (field prefix p for batches).
func checkTagsMeta(p string, tags []string, meta map[string]string) *apiError {
	if len(tags) > maxTags {
		return badField(p+"tags", "at most %d tags", maxTags)
	}
	for i, t := range tags {
		f := idx(p+"tags", i)
		if t == "" || len(t) > maxTagLen {
			return badField(f, "a tag has 1 to %d bytes", maxTagLen)
		}
		if e := checkText(f, t); e != nil {
			return e
		}
	}
	if len(meta) > maxMetadata {
		return badField(p+"metadata", "at most %d metadata keys", maxMetadata)
	}
	for k, v := range meta {
		f := p + "metadata." + k
		if k == "" || len(k) > maxMetaKeyLen {
			return badField(p+"metadata", "a metadata key has 1 to %d bytes", maxMetaKeyLen)
		}
		if e := checkText(f, k); e != nil {
			return e
		}
		if len(v) > maxMetaValueLen {
			return badField(f, "a metadata value has at most %d bytes", maxMetaValueLen)
		}
		if e := checkText(f, v); e != nil {
			return e
		}
	}
	return nil
}

// reservedHeaders are set from their own fields, or are trace or MIME
// structure fields the API writes itself.
var reservedHeaders = map[string]string{
	"from": "from", "to": "to", "cc": "cc", "bcc": "bcc", "reply-to": "reply_to", "subject": "subject",
	"sender": "", "date": "", "message-id": "", "mime-version": "", "content-type": "",
	"content-transfer-encoding": "", "content-disposition": "", "content-id": "",
	"return-path": "", "received": "",
}

func checkHeaderName(field, k string) *apiError {
	if k == "" || len(k) > maxHeaderName {
		return badField(field, "a header name has 1 to %d characters", maxHeaderName)
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c == '\r' || c == '\n' {
			return badField(field, "header name %q must not contain CR or LF", k)
		}
		if c < 33 || c > 126 || c == ':' {
			return badField(field, "header name %q: only printable ASCII without ':' or spaces", k)
		}
	}
	if use, ok := reservedHeaders[strings.ToLower(k)]; ok {
		if use != "" {
			return badField(field, "set %s with the %q field, not in headers", k, use)
		}
		return badField(field, "%s is set by the API and cannot be given in headers", k)
	}
	return nil
}

// validMessage is a checked messageRequest, ready to compose.
type validMessage struct {
	req     *messageRequest
	from    address
	replyTo []address
	to, cc  []address
	rcpts   []string // envelope recipients: to, cc, bcc, without duplicates
	headers []headerKV
	atts    []decodedAttachment
}

type headerKV struct{ k, v string }

type decodedAttachment struct {
	filename    string
	contentType string
	params      map[string]string
	contentID   string
	data        []byte
}

// validate checks a message request. p prefixes field names ("messages[3]."
// in a batch).
func validate(p string, m *messageRequest) (*validMessage, *apiError) {
	v := &validMessage{req: m}
	if strings.TrimSpace(m.From) == "" {
		return nil, missingField(p + "from")
	}
	var e *apiError
	if v.from, e = parseOneAddress(p+"from", m.From); e != nil {
		return nil, e
	}
	for i, s := range m.ReplyTo {
		l, e := parseAddresses(idx(p+"reply_to", i), s)
		if e != nil {
			return nil, e
		}
		v.replyTo = append(v.replyTo, l...)
	}
	seen := map[string]bool{}
	add := func(field string, list addrList, keep *[]address) *apiError {
		for i, s := range list {
			l, e := parseAddresses(idx(field, i), s)
			if e != nil {
				return e
			}
			if keep != nil {
				*keep = append(*keep, l...)
			}
			for _, a := range l {
				c := canonicalAddr(a.Addr) // the envelope keeps quoting
				local, domain, _ := pipeline.SplitAddress(c)
				k := local + "@" + domain
				if seen[k] {
					continue
				}
				seen[k] = true
				v.rcpts = append(v.rcpts, c)
			}
			if len(v.rcpts) > maxRecipients {
				return badField(field, "at most %d recipients per message", maxRecipients)
			}
		}
		return nil
	}
	if e := add(p+"to", m.To, &v.to); e != nil {
		return nil, e
	}
	if e := add(p+"cc", m.Cc, &v.cc); e != nil {
		return nil, e
	}
	if e := add(p+"bcc", m.Bcc, nil); e != nil {
		return nil, e
	}
	if len(v.rcpts) == 0 {
		return nil, errf(http.StatusBadRequest, codeMissingField, p+"to", "at least one recipient is required in to, cc or bcc")
	}
	if len(m.Subject) > maxHeaderValue {
		return nil, badField(p+"subject", "subject has at most %d bytes", maxHeaderValue)
	}
	if e := checkHeaderValue(p+"subject", m.Subject); e != nil {
		return nil, e
	}
	if !utf8.ValidString(m.Text) {
		return nil, badField(p+"text", "text is not valid UTF-8")
	}
	if !utf8.ValidString(m.HTML) {
		return nil, badField(p+"html", "html is not valid UTF-8")
	}
	if len(m.Headers) > maxHeaders {
		return nil, badField(p+"headers", "at most %d custom headers", maxHeaders)
	}
	for k, val := range m.Headers {
		f := p + "headers." + k
		if e := checkHeaderName(f, k); e != nil {
			return nil, e
		}
		if len(val) > maxHeaderValue {
			return nil, badField(f, "a header value has at most %d bytes", maxHeaderValue)
		}
		if e := checkHeaderValue(f, val); e != nil {
			return nil, e
		}
		v.headers = append(v.headers, headerKV{k, val})
	}
	if e := checkTagsMeta(p, m.Tags, m.Metadata); e != nil {
		return nil, e
	}
	if len(m.Attachments) > maxAttachments {
		return nil, badField(p+"attachments", "at most %d attachments", maxAttachments)
	}
	for i := range m.Attachments {
		d, e := checkAttachment(idx(p+"attachments", i)+".", &m.Attachments[i])
		if e != nil {
			return nil, e
		}
		v.atts = append(v.atts, d)
	}
	return v, nil
}

func checkAttachment(p string, a *attachment) (decodedAttachment, *apiError) {
	d := decodedAttachment{filename: a.Filename, contentID: a.ContentID}
	if a.Filename == "" && a.ContentID == "" {
		return d, missingField(p + "filename")
	}
	if len(a.Filename) > maxFilenameLen {
		return d, badField(p+"filename", "a filename has at most %d bytes", maxFilenameLen)
	}
	if e := checkHeaderValue(p+"filename", a.Filename); e != nil {
		return d, e
	}
	if strings.ContainsAny(a.Filename, `/\`) {
		return d, badField(p+"filename", "a filename must not contain a path")
	}
	if a.ContentID != "" {
		if len(a.ContentID) > maxContentIDLen {
			return d, badField(p+"content_id", "a content_id has at most %d bytes", maxContentIDLen)
		}
		for i := 0; i < len(a.ContentID); i++ {
			c := a.ContentID[i]
			if c == '\r' || c == '\n' {
				return d, badField(p+"content_id", "content_id must not contain CR or LF")
			}
			if c <= ' ' || c > '~' || c == '<' || c == '>' || c == '"' || c == '\\' {
				return d, badField(p+"content_id", "content_id: printable ASCII without spaces, <, >, \" or \\ (write it without the angle brackets)")
			}
		}
	}
	ct := a.ContentType
	if ct == "" {
		ct = mime.TypeByExtension(path.Ext(a.Filename))
		if ct == "" {
			ct = "application/octet-stream"
		}
	}
	if e := checkText(p+"content_type", ct); e != nil {
		return d, e
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || !strings.Contains(mt, "/") {
		return d, badField(p+"content_type", "content_type %q is not a media type like image/png", ct)
	}
	if strings.HasPrefix(mt, "multipart/") || strings.HasPrefix(mt, "message/") {
		return d, badField(p+"content_type", "content_type %s cannot be an attachment; use application/octet-stream", mt)
	}
	for k, pv := range params {
		if e := checkText(p+"content_type", k+pv); e != nil {
			return d, e
		}
	}
	delete(params, "name") // set from filename
	d.contentType, d.params = mt, params
	switch strings.ToLower(a.Encoding) {
	case "", "base64":
	default:
		return d, badField(p+"encoding", "unknown encoding %q: content must be base64", a.Encoding)
	}
	data, err := base64.StdEncoding.DecodeString(a.Content)
	if err != nil {
		return d, badField(p+"content", "content is not valid base64 (standard alphabet, padded): %v", err)
	}
	d.data = data
	return d, nil
}

// checkIdempotencyKey validates an Idempotency-Key header value.
func checkIdempotencyKey(k string) *apiError {
	if len(k) > maxIdempotencyKey {
		return badField("Idempotency-Key", "the Idempotency-Key header has at most %d characters", maxIdempotencyKey)
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x21 || k[i] > 0x7e {
			return badField("Idempotency-Key", "the Idempotency-Key header: printable ASCII without spaces")
		}
	}
	return nil
}

// normalizeRaw returns data with every bare LF turned into CRLF, ending
// in CRLF. A bare CR, a NUL or a line longer than 998 octets is an error:
// none can be sent safely, and a bare CR is how SMTP smuggling starts.
func normalizeRaw(dst, data []byte) ([]byte, *apiError) {
	dst = dst[:0]
	line := 0
	for i := 0; i < len(data); i++ {
		c := data[i]
		switch c {
		case '\r':
			if i+1 >= len(data) || data[i+1] != '\n' {
				return nil, badField("message", "the message has a bare CR (at byte %d); use CRLF or LF line endings", i)
			}
			dst = append(dst, '\r', '\n')
			i++
			line = 0
			continue
		case '\n':
			dst = append(dst, '\r', '\n')
			line = 0
			continue
		case 0:
			return nil, badField("message", "the message contains a NUL byte (at byte %d)", i)
		}
		line++
		if line > maxLineLen {
			return nil, badField("message", "the message has a line longer than %d bytes (at byte %d)", maxLineLen, i)
		}
		dst = append(dst, c)
	}
	if len(dst) > 0 && !bytes.HasSuffix(dst, []byte("\r\n")) {
		dst = append(dst, '\r', '\n')
	}
	return dst, nil
}

// batchItemError finds which item of a batch body failed to decode and
// answers with its field prefixed by messages[i]. (encoding/json names
// the field of an item without its index); nil when the items decode one
// by one (the error is then outside them). Only on the error path.
func batchItemError(body []byte) *apiError {
	var raw struct {
		Messages []json.RawMessage `json:"messages"`
	}
	if json.Unmarshal(body, &raw) != nil {
		return nil
	}
	for i, item := range raw.Messages {
		dec := json.NewDecoder(bytes.NewReader(item))
		dec.DisallowUnknownFields()
		var m messageRequest
		err := dec.Decode(&m)
		if err == nil {
			continue
		}
		e := jsonError(err)
		prefix := fmt.Sprintf("messages[%d]", i)
		switch {
		case e.Field != "":
			e.Message = strings.Replace(e.Message, e.Field, prefix+"."+e.Field, 1)
			e.Field = prefix + "." + e.Field
		default:
			e.Field = prefix
			e.Message = prefix + ": " + e.Message
		}
		return e
	}
	return nil
}
