package pipeline

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-message/textproto"
)

// Source names where a message came from; it is copied into every event.
// DefaultMaxHops is how many Received fields a message may carry before
// it is refused as a mail loop (RFC 5321 section 6.3): the SMTP
// listeners' default max_hops, and the HTTP raw endpoint's fixed limit.
const DefaultMaxHops = 100

const (
	SourceSMTP = "smtp"
	SourceHTTP = "http"
	SourceDSN  = "dsn" // bounces Sluice generated itself
)

// Identity is who is sending, whatever proved it: SMTP AUTH, an HTTP API key,
// or (later) a signed bearer token. Stages see this one type for all of them.
type Identity struct {
	Name    string   // user name or API key id
	Tenant  string   // tenant the identity belongs to; copied into events
	Method  string   // "smtp-auth", "apikey", "token"
	Scopes  []string // e.g. "send", "admin"
	Senders []string // allowed sender domains; empty means unrestricted
}

// HasScope reports whether the identity carries scope s.
func (id *Identity) HasScope(s string) bool {
	if id == nil {
		return false
	}
	for _, x := range id.Scopes {
		if x == s {
			return true
		}
	}
	return false
}

// Credentials are what a client presented to authenticate; on_auth stages
// turn them into an Identity.
type Credentials struct {
	Mechanism string // "PLAIN", "LOGIN", "BEARER", "APIKEY"
	Username  string
	Password  string
	Token     string
}

// Conn describes one client connection (SMTP) or one request (HTTP).
type Conn struct {
	ID           string
	Source       string // SourceSMTP or SourceHTTP
	Listener     string // listener name, e.g. "127.0.0.1:2525"
	ServerName   string // our host name on this listener (greeting, Received); "" = the node's
	RemoteIP     netip.Addr
	RemotePort   uint16
	HELO         string
	TLS          string // "" when clear text, else "TLS1.2", "TLS1.3"
	Identity     *Identity
	RelayNetwork bool // the client address is in the listener's relay networks
}

// Authenticated reports whether the connection carries an identity.
func (c *Conn) Authenticated() bool { return c.Identity != nil }

// Tenant returns the identity's tenant, or "".
func (c *Conn) Tenant() string {
	if c.Identity == nil {
		return ""
	}
	return c.Identity.Tenant
}

// Recipient is one envelope recipient.
type Recipient struct {
	Address string // canonical RFC 5321 form (see ParseAddress): sendable as is inside <...>
	Local   string // the local part without quotes or escapes
	Domain  string // lower-cased ASCII or UTF-8 domain, or an address literal "[192.0.2.1]"
	// Relay is set when a stage accepted the recipient explicitly or the
	// session may relay; the chain denies relay when it is false at the end
	// of on_rcpt and the domain is not local.
	Relay  bool
	Route  *Route // chosen by on_route
	Params RcptParams
}

// NewRecipient parses a recipient address (ParseAddress) into a Recipient
// whose Address is the canonical form. Besides syntax errors (501 5.1.3) it
// refuses a local part containing '%', '!' or '@' (ErrRoutingLocalPart, 553
// 5.1.3): a next hop could route on it (victim%elsewhere@local.example).
func NewRecipient(addr string) (*Recipient, error) {
	canon, local, domain, err := ParseAddress(addr)
	if err != nil {
		return nil, err
	}
	if err := checkRoutingLocal(local); err != nil {
		return nil, err
	}
	return &Recipient{Address: canon, Local: local, Domain: domain}, nil
}

// SplitAddress parses addr (ParseAddress) and returns its local part
// without quoting and its domain in lower case. It refuses what is not an
// RFC 5321 mailbox: empty parts, any control character (CR, LF, NUL ...),
// a malformed local part or domain.
func SplitAddress(addr string) (local, domain string, err error) {
	_, local, domain, err = ParseAddress(addr)
	return local, domain, err
}

// Body types (RFC 6152, RFC 3030): MailParams.Body.
const (
	Body7Bit       = "7BIT"
	Body8BitMIME   = "8BITMIME"
	BodyBinaryMIME = "BINARYMIME"
)

// MailParams are the MAIL FROM parameters that travel with the message to
// the next hop (RFC 6152 BODY, RFC 6531 SMTPUTF8, RFC 3461 RET and ENVID).
// They are spooled with the message.
type MailParams struct {
	Body     string `json:"body,omitempty"`     // Body7Bit, Body8BitMIME, BodyBinaryMIME or "" (not given)
	SMTPUTF8 bool   `json:"smtputf8,omitempty"` // the envelope or header needs SMTPUTF8
	Ret      string `json:"ret,omitempty"`      // DSN: "FULL" or "HDRS", "" (not given: headers)
	EnvID    string `json:"envid,omitempty"`    // DSN: the envelope id, as given (xtext decoded)
	// RequireTLS is the REQUIRETLS MAIL FROM parameter (RFC 8689): the
	// message may only leave over TLS whose certificate a policy
	// validated, to a next hop that offers REQUIRETLS itself (see
	// docs/delivery.md "REQUIRETLS"). Set by the SMTP client (only on a
	// TLS session), the HTTP API's "require_tls" or a stage's edit.
	RequireTLS bool `json:"requiretls,omitempty"`
	// TLSOptional is not a MAIL parameter: it records, when the message
	// is accepted, that its header has "TLS-Required: No" (RFC 8689
	// section 5): the recipient domain's MTA-STS (and DANE) policy is
	// not enforced on its delivery. Ignored when RequireTLS is set, which
	// takes precedence.
	TLSOptional bool `json:"tls_optional,omitempty"`
}

// DSN NOTIFY values (RFC 3461 section 4.1).
const (
	NotifyNever   = "NEVER"
	NotifySuccess = "SUCCESS"
	NotifyFailure = "FAILURE"
	NotifyDelay   = "DELAY"
)

// RcptParams are the RCPT TO parameters of RFC 3461 that travel with a
// recipient: NOTIFY (nil: not given, the default FAILURE,DELAY behaviour)
// and ORCPT ("rfc822;bob@example.org", as given, xtext decoded).
type RcptParams struct {
	Notify []string `json:"notify,omitempty"`
	ORCPT  string   `json:"orcpt,omitempty"`
}

// Txn is one mail transaction: a sender and its recipients.
type Txn struct {
	Conn       *Conn
	ID         string // message id (ULID), assigned at MAIL FROM
	Sender     string // "" is the null sender <>
	Params     MailParams
	Recipients []*Recipient
	Meta       map[string]string // persisted, copied into every event
	Tags       []string          // persisted, copied into every event
	Received   time.Time
	// Scratch holds per-transaction values stages leave for later stages
	// (an SPF result that DMARC reads). Neither persisted nor copied into
	// events. Stages set it through Verdict.Edits.
	Scratch map[string]string
	// AuthResults collects authentication results (SPF, DKIM, DMARC ...)
	// from stages; the chain writes them as one Authentication-Results
	// field after on_message.
	AuthResults []AuthResult
	// Track is what the submission (HTTP track_opens, track_clicks,
	// list_unsubscribe) and stages (Edits.Track) asked for engagement
	// tracking; nil: nothing asked, the tenant's defaults apply. Read by
	// the chain's BodyRewriter; not persisted.
	Track *Track

	// headerEdits made before the content arrived (on_mail, on_rcpt);
	// applied when Chain.Message starts.
	headerEdits []HeaderEdit
}

// SetMeta sets a metadata key; an empty value deletes it.
func (t *Txn) SetMeta(k, v string) {
	if v == "" {
		delete(t.Meta, k)
		return
	}
	if t.Meta == nil {
		t.Meta = make(map[string]string)
	}
	t.Meta[k] = v
}

// AddTag adds a tag once.
func (t *Txn) AddTag(tag string) {
	for _, x := range t.Tags {
		if x == tag {
			return
		}
	}
	t.Tags = append(t.Tags, tag)
}

// Message is a transaction with its content, as seen by on_message and
// on_route. Header is mutable (fields added by stages are prepended, as
// trace fields are); Body is the bytes after the header section, CRLF-
// terminated lines, never modified by stages: only the chain's
// BodyRewriter (link tracking) replaces it, before the sign hooks. Header may be empty:
// ParseMessage accepts messages whose header section is missing or not
// ended by an empty line, and Bytes then writes them back as they came.
// In a Go plugin whose stage implements sdk.HeaderReader the header is
// left unparsed (NewMessageUnparsed): Header is empty until ParseHeader,
// and HeaderValue reads fields from the block; HeaderValue works on every
// message.
type Message struct {
	*Txn
	Header textproto.Header
	Body   []byte

	// noBlank: the received header section did not end with an empty
	// line (the body follows the fields directly, or there are no
	// fields): Bytes writes none either.
	noBlank bool
	// unparsed: the header block NewMessageUnparsed was given, until
	// ParseHeader parses it into Header (rawheader.go).
	unparsed []byte
	// parsedLen is the length of the header section ParseMessage parsed
	// (0: unknown): HeaderBytes sizes its buffer by it.
	parsedLen int
}

// ParseMessage splits raw RFC 5322 data into header and body. data must use
// CRLF line endings. It is tolerant, as peers are with what devices and
// scripts send: the header section is the header fields at the start of
// data, up to the empty line that ends them or up to the first line that is
// not a header field (no empty line between header and body, a message
// that is only a body). Such a line and all that follows it is the body,
// and Bytes writes the message back byte for byte (plus the fields stages
// add). A message with fields and no body gains the empty line that ends
// its header. An mbox "From " line at the very start is mbox framing, not
// part of the message (RFC 4155): it is dropped (unless it is a field,
// "From : ..."), and the header fields
// after it are the header (our Received field above it would leave it in
// the middle of the header, where a strict parser ends the header and
// loses every field below). ParseMessage does not fail today; the error
// is kept for data that is truly unusable.
func ParseMessage(txn *Txn, data []byte) (*Message, error) {
	if bytes.HasPrefix(data, []byte("From ")) {
		// "From : a@example.com" (space before the colon, RFC 5322
		// section 4.5.3's obsolete syntax) is the From field, not mbox
		// framing: dropping it lost the message's author, unsigned by
		// dkim_sign and unseen by dmarc (a p=reject bypass).
		if i := bytes.IndexByte(data, '\n'); i >= 0 && !isFieldLine(data[:i+1]) {
			data = data[i+1:]
		}
	}
	n, blank := headerSection(data)
	hdr := data[:n]
	// Parse only the header section, with a reader sized to it: the body
	// may be megabytes and is never copied.
	br := bufio.NewReaderSize(bytes.NewReader(hdr), max(16, min(len(hdr), 4096)))
	h, err := textproto.ReadHeader(br)
	if err != nil {
		// headerSection found only well-formed fields, so this does not
		// happen; if it does, the whole message is body.
		return &Message{Txn: txn, Body: data, noBlank: true}, nil
	}
	consumed := len(hdr) - br.Buffered()
	return &Message{Txn: txn, Header: h, Body: data[consumed:], noBlank: !blank && n < len(data), parsedLen: consumed}, nil
}

// headerSection returns the length of the header fields at the start of
// data, including the empty line that ends them (blank true) when there is
// one. Lines are CRLF-terminated; a field is a name of printable ASCII
// other than ':' (optionally followed by spaces), a colon and a value,
// continued on lines that start with a space or a tab.
func headerSection(data []byte) (n int, blank bool) {
	pos, fields := 0, 0
	for pos < len(data) {
		end := bytes.IndexByte(data[pos:], '\n')
		if end < 0 {
			return pos, false // an unterminated last line is body
		}
		line := data[pos : pos+end+1]
		switch {
		case len(line) == 2 && line[0] == '\r':
			return pos + 2, true
		case line[0] == ' ' || line[0] == '\t':
			if fields == 0 {
				return 0, false
			}
		case isFieldLine(line):
			fields++
		default:
			return pos, false
		}
		pos += end + 1
	}
	return pos, false
}

// isFieldLine reports whether line starts a header field: a field name
// (RFC 5322 ftext: printable ASCII other than ':'), optional spaces, ':'.
func isFieldLine(line []byte) bool {
	i := 0
	for i < len(line) && line[i] > ' ' && line[i] < 0x7f && line[i] != ':' {
		i++
	}
	if i == 0 {
		return false
	}
	for i < len(line) && (line[i] == ' ' || line[i] == '\t') {
		i++
	}
	return i < len(line) && line[i] == ':'
}

// HeaderEnded reports whether the header section is ended by an empty
// line, as RFC 5322 section 2.1 requires. It is false for a message that
// came without one (fields followed directly by body text, or only body
// text), which Bytes writes back as it came: a DKIM signer cannot sign
// such a message, since verifiers cannot tell its header from its body.
func (m *Message) HeaderEnded() bool { return !m.noBlank }

// Bytes serialises the header and body as they will be spooled and sent.
func (m *Message) Bytes() ([]byte, error) {
	var buf bytes.Buffer
	buf.Grow(len(m.Body) + 1024)
	if err := m.writeHeader(&buf); err != nil {
		return nil, err
	}
	buf.Write(m.Body)
	return buf.Bytes(), nil
}

// HeaderBytes returns the header section as Bytes writes it (Bytes is
// HeaderBytes followed by Body), without copying the body.
func (m *Message) HeaderBytes() ([]byte, error) {
	var buf bytes.Buffer
	// The fields as received and room for those the relay and stages add
	// (Received, a few more): one allocation, not a growth series.
	buf.Grow(max(m.parsedLen, len(m.unparsed)) + 512)
	if err := m.writeHeader(&buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeHeader writes the header section as Bytes does.
func (m *Message) writeHeader(buf *bytes.Buffer) error {
	if m.unparsed != nil && m.Header.Len() == 0 {
		buf.Write(m.unparsed) // what writing its parsed form would write
		return nil
	}
	m.ParseHeader()
	if err := textproto.WriteHeader(buf, m.Header); err != nil {
		return err
	}
	if m.noBlank {
		buf.Truncate(buf.Len() - 2) // the empty line WriteHeader ends with
	}
	return nil
}

// WriteTo writes what Bytes returns to w without building a copy (a
// signer hashes the message this way).
func (m *Message) WriteTo(w io.Writer) (int64, error) {
	var hdr bytes.Buffer
	if err := m.writeHeader(&hdr); err != nil {
		return 0, err
	}
	n, err := w.Write(hdr.Bytes())
	if err != nil {
		return int64(n), err
	}
	nb, err := w.Write(m.Body)
	return int64(n + nb), err
}

// Route kinds. Later kinds (hold, drop) get their own constants.
const (
	RouteMX    = "mx"
	RouteRelay = "relay"
	// RouteCapture keeps the recipient's copy in its tenant's sandbox
	// inbox (internal/capture, docs/sandbox.md) instead of sending it:
	// the delivery attempt, its events and outcomes are those of a real
	// one, but nothing leaves the machine.
	RouteCapture = "capture"
)

// TLS policies for delivery (docs/delivery.md "TLS policies"). A
// destination's DANE or MTA-STS policy applies on top of opportunistic,
// required and verify for MX routes.
const (
	TLSOpportunistic = "opportunistic" // STARTTLS when offered, clear text otherwise
	TLSRequired      = "required"      // defer when STARTTLS is not offered or fails
	TLSNone          = "none"          // never STARTTLS
	// TLSVerify: STARTTLS required and the certificate verified against
	// the trusted roots for the host name; defer otherwise.
	TLSVerify = "verify"
	// TLSDANEOrMTASTS (MX routes only): deliver only under the
	// destination's DANE (RFC 7672) or MTA-STS enforce (RFC 8461)
	// policy, validated; defer when it publishes neither.
	TLSDANEOrMTASTS = "dane-or-mta-sts"
)

// TLSPolicies lists the route TLS policies, for validation messages.
var TLSPolicies = []string{TLSOpportunistic, TLSRequired, TLSVerify, TLSDANEOrMTASTS, TLSNone}

// Route says where a recipient goes. The zero Route is invalid; use MX() or
// a relay route.
type Route struct {
	Kind     string `json:"kind"`
	Host     string `json:"host,omitempty"`      // relay: smarthost name or IP
	Port     int    `json:"port,omitempty"`      // relay: default 25; mx: 0 = delivery default
	TLS      string `json:"tls,omitempty"`       // TLS policy; "" = delivery default
	AuthUser string `json:"auth_user,omitempty"` // relay: optional SMTP AUTH PLAIN
	AuthPass string `json:"auth_pass,omitempty"`
	// Pool names the egress pool (sluice.egress) the recipient leaves
	// from; "" is the default pool (or the host's own address when no
	// egress is configured).
	Pool string `json:"pool,omitempty"`
	// Tenant is the sandbox inbox of a capture route; "" is filled with
	// the message's tenant when the message is accepted.
	Tenant string `json:"tenant,omitempty"`
}

// ValidTenant reports whether t is a tenant name: 1 to 64 ASCII letters,
// digits, '.', '_' or '-' (the names API keys and the configuration take).
func ValidTenant(t string) bool { return len(t) > 0 && len(t) <= 64 && NameChars(t) }

// Capture is a capture route into tenant's sandbox inbox ("": the
// message's tenant).
func Capture(tenant string) *Route { return &Route{Kind: RouteCapture, Tenant: tenant} }

// MX is the default route: look up the recipient domain's MX hosts.
func MX() *Route { return &Route{Kind: RouteMX} }

// Validate checks the route's fields.
func (r *Route) Validate() error {
	switch r.Kind {
	case RouteMX:
	case RouteRelay:
		if r.Host == "" {
			return fmt.Errorf("relay route: host is required")
		}
		if r.Port < 0 || r.Port > 65535 {
			return fmt.Errorf("relay route: port %d out of range", r.Port)
		}
	case RouteCapture:
		// A tenant no key can name would be an inbox no one can read.
		if r.Tenant != "" && !ValidTenant(r.Tenant) {
			return fmt.Errorf("capture route: tenant %q: want 1 to 64 letters, digits, '.', '_' or '-'", r.Tenant)
		}
	default:
		return fmt.Errorf("unknown route kind %q (want mx, relay or capture)", r.Kind)
	}
	if len(r.Pool) > 64 || strings.ContainsAny(r.Pool, " |\r\n") {
		return fmt.Errorf("route pool %q: want a pool name of at most 64 characters without spaces", r.Pool)
	}
	switch r.TLS {
	case "", TLSOpportunistic, TLSRequired, TLSVerify, TLSNone:
	case TLSDANEOrMTASTS:
		if r.Kind == RouteRelay {
			return fmt.Errorf("route tls %q applies to mx routes only (a relay publishes no MTA-STS policy); use %q for a relay", r.TLS, TLSVerify)
		}
	default:
		return fmt.Errorf("route tls %q: want one of %s", r.TLS, strings.Join(TLSPolicies, ", "))
	}
	return nil
}

// QueueName is the delivery queue a recipient on this route joins: its
// domain for MX routes, "relay:host:port" for relays, "sandbox:TENANT"
// for captures. Recipients in one queue share connections and
// concurrency limits.
func (r *Route) QueueName(domain string) string {
	if r.Kind == RouteCapture {
		return "sandbox:" + r.Tenant
	}
	if r.Kind == RouteRelay {
		port := r.Port
		if port == 0 {
			port = 25
		}
		// Called per recipient at acceptance and in the queue: no fmt.
		return "relay:" + r.Host + ":" + strconv.Itoa(port)
	}
	return domain
}
