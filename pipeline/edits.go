package pipeline

import (
	"fmt"
	"sort"
	"strings"

	stdtextproto "net/textproto"

	"github.com/emersion/go-message/textproto"
)

// Header edit operations.
const (
	HeaderAdd    = "add"    // prepend one field
	HeaderSet    = "set"    // remove every field of the name, then prepend one
	HeaderRemove = "remove" // remove every field of the name
)

// HeaderEdit is one change to the message header.
type HeaderEdit struct {
	Op    string `json:"op"` // HeaderAdd, HeaderSet or HeaderRemove
	Name  string `json:"name"`
	Value string `json:"value,omitempty"`
}

// AuthResult is one method's result for the Authentication-Results header
// field (RFC 8601 section 2.2), e.g. {Method: "spf", Result: "pass",
// Props: ["smtp.mailfrom=example.com"]}. The chain writes every result of
// a message into one field, in the order the stages produced them.
type AuthResult struct {
	Method string   `json:"method"`           // "spf", "dkim", "dmarc", ...
	Result string   `json:"result"`           // "pass", "fail", "none", ...
	Reason string   `json:"reason,omitempty"` // free text, written as reason="..." (" made ', \ made /)
	Props  []string `json:"props,omitempty"`  // "ptype.property=value"
}

// Edits are the changes a stage asks for with its verdict. Stages return
// them as data and the chain applies them after the stage returns, so the
// next stage sees them; the same types cross the plugin process boundary.
//
// Which hook may make which edit (anything else is refused: a Lua stage at
// load time where it can be seen, any stage at run time as a stage
// failure, never dropped silently):
//
//	                 headers  meta/tags  auth results  scratch
//	on_connect/helo/auth  -       -           -           -
//	on_mail, on_rcpt      yes*    yes         yes         yes
//	on_message            yes     yes         yes         yes
//	on_route              -       -           -           yes
//	on_event              -       -           -           -
//
// (*) Header edits made before the message exists are kept on the
// transaction and applied, in order, when the content arrives, before
// on_message runs.
//
// Edits are applied only with Continue, Accept and Discard verdicts; the
// edits of a stage that rejects or tempfails are dropped with it.
type Edits struct {
	Headers     []HeaderEdit      `json:"headers,omitempty"`
	Meta        map[string]string `json:"meta,omitempty"` // an empty value deletes the key
	Tags        []string          `json:"tags,omitempty"`
	AuthResults []AuthResult      `json:"auth_results,omitempty"`
	// Scratch values are per transaction: later stages of the same
	// transaction read them (an SPF result for DMARC), they are neither
	// persisted nor copied into events. An empty value deletes the key.
	Scratch map[string]string `json:"scratch,omitempty"`
	// Track asks for engagement tracking of this message (msg:track in
	// Lua; docs/tracking.md): its set fields override what earlier stages
	// or the request asked. Allowed where header edits are.
	Track *Track `json:"track,omitempty"`
	// RequireTLS sets or clears the message's REQUIRETLS flag (RFC 8689,
	// MailParams.RequireTLS; txn:set_require_tls in Lua, Edits.require_tls
	// in the plugin protocol). Allowed where header edits are.
	RequireTLS *bool `json:"require_tls,omitempty"`
}

// Empty reports whether e asks for nothing.
func (e *Edits) Empty() bool {
	return e == nil || len(e.Headers) == 0 && len(e.Meta) == 0 && len(e.Tags) == 0 &&
		len(e.AuthResults) == 0 && len(e.Scratch) == 0 && e.Track == nil && e.RequireTLS == nil
}

// AddHeader records a field to prepend.
func (e *Edits) AddHeader(name, value string) {
	e.Headers = append(e.Headers, HeaderEdit{Op: HeaderAdd, Name: name, Value: value})
}

// SetHeader records a field that replaces every field of its name.
func (e *Edits) SetHeader(name, value string) {
	e.Headers = append(e.Headers, HeaderEdit{Op: HeaderSet, Name: name, Value: value})
}

// RemoveHeader records the removal of every field named name.
func (e *Edits) RemoveHeader(name string) {
	e.Headers = append(e.Headers, HeaderEdit{Op: HeaderRemove, Name: name})
}

// SetMeta records a metadata change; "" deletes the key.
func (e *Edits) SetMeta(k, v string) {
	if e.Meta == nil {
		e.Meta = make(map[string]string)
	}
	e.Meta[k] = v
}

// SetScratch records a scratch value; "" deletes the key.
func (e *Edits) SetScratch(k, v string) {
	if e.Scratch == nil {
		e.Scratch = make(map[string]string)
	}
	e.Scratch[k] = v
}

// SetRequireTLS records setting (true) or clearing (false) the message's
// REQUIRETLS flag (RFC 8689; Edits.RequireTLS, txn:set_require_tls in
// Lua). Allowed in on_mail, on_rcpt and on_message.
func (e *Edits) SetRequireTLS(on bool) { e.RequireTLS = &on }

// AddTag records a tag to add.
func (e *Edits) AddTag(t string) { e.Tags = append(e.Tags, t) }

// Edit kinds, as named in errors and in Permitted.
const (
	EditHeaders     = "header"
	EditMeta        = "metadata"
	EditTags        = "tag"
	EditAuthResults = "authentication result"
	EditScratch     = "scratch"
	EditTrack       = "tracking"
	EditRequireTLS  = "REQUIRETLS"
)

// Permitted reports whether hook (a Lua hook name such as "on_route") may
// make edits of kind (EditHeaders, ...). See Edits for the table.
func Permitted(hook, kind string) bool {
	switch hook {
	case "on_mail", "on_rcpt", "on_message":
		return true
	case "on_route":
		return kind == EditScratch
	}
	return false
}

// EditError is the stage failure for an edit a hook may not make.
type EditError struct {
	Stage, Hook, Kind string
}

func (e *EditError) Error() string {
	return fmt.Sprintf("stage %q: %s edits are not allowed in %s (%s)", e.Stage, e.Kind, e.Hook, e.Allowed())
}

// Allowed says where edits of e.Kind may be made.
func (e *EditError) Allowed() string {
	if e.Kind == EditScratch {
		return "scratch values may be set in on_mail, on_rcpt, on_message and on_route"
	}
	return e.Kind + " edits may be made in on_mail, on_rcpt and on_message, which run once per message; on_route runs once per recipient and may only choose a route"
}

// check returns the first edit kind in e that hook may not make, or "".
func (e *Edits) check(hook string) string {
	switch {
	case len(e.Headers) > 0 && !Permitted(hook, EditHeaders):
		return EditHeaders
	case len(e.Meta) > 0 && !Permitted(hook, EditMeta):
		return EditMeta
	case len(e.Tags) > 0 && !Permitted(hook, EditTags):
		return EditTags
	case len(e.AuthResults) > 0 && !Permitted(hook, EditAuthResults):
		return EditAuthResults
	case len(e.Scratch) > 0 && !Permitted(hook, EditScratch):
		return EditScratch
	case e.Track != nil && !Permitted(hook, EditTrack):
		return EditTrack
	case e.RequireTLS != nil && !Permitted(hook, EditRequireTLS):
		return EditRequireTLS
	}
	return ""
}

// validate checks the values of e: header names are RFC 5322 field names
// (of at most MaxEditFieldName characters when added or set), no value
// carries CR, LF or NUL, or has more than MaxEditFieldValue bytes, and an
// added or set value can be folded into lines of at most 998 characters
// (CheckFold).
func (e *Edits) validate() error {
	for _, h := range e.Headers {
		if !validFieldName(h.Name) {
			return fmt.Errorf("invalid header field name %q", h.Name)
		}
		if h.Op != HeaderRemove && len(h.Name) > MaxEditFieldName {
			return fmt.Errorf("header field name %.40q... too long: %d characters, at most %d", h.Name, len(h.Name), MaxEditFieldName)
		}
		if h.Op != HeaderRemove && len(h.Value) > MaxEditFieldValue {
			return fmt.Errorf("the value of header field %s is too long: %d bytes, at most %d", h.Name, len(h.Value), MaxEditFieldValue)
		}
		switch h.Op {
		case HeaderAdd, HeaderSet, HeaderRemove:
		default:
			return fmt.Errorf("unknown header edit %q (want add, set or remove)", h.Op)
		}
		if strings.ContainsAny(h.Value, "\r\n\x00") {
			return fmt.Errorf("the value of header field %s contains CR, LF or NUL", h.Name)
		}
		if h.Op != HeaderRemove {
			if err := CheckFold(h.Name, h.Value); err != nil {
				return err
			}
		}
	}
	for k, v := range e.Meta {
		if k == "" || strings.ContainsAny(k+v, "\r\n\x00") {
			return fmt.Errorf("metadata key %q: keys must be non-empty and keys and values free of CR, LF and NUL", k)
		}
	}
	for _, t := range e.Tags {
		if t == "" || strings.ContainsAny(t, "\r\n\x00") {
			return fmt.Errorf("tag %q: tags must be non-empty and free of CR, LF and NUL", t)
		}
	}
	for _, a := range e.AuthResults {
		if err := a.Validate(); err != nil {
			return err
		}
	}
	return nil
}

// Validate checks an authentication result: method and result are RFC
// 8601 keywords of at most MaxAuthResultWord bytes, reason and properties
// carry no CR, LF, NUL or ';', have at most MaxEditFieldValue bytes
// together and no run of more than MaxAuthResultWord bytes without a space
// or tab.
func (a AuthResult) Validate() error {
	if !isToken(a.Method) || !isToken(a.Result) {
		return fmt.Errorf("authentication result %q=%q: method and result must be RFC 8601 keywords (letters, digits, '-', '_', '.')", a.Method, a.Result)
	}
	n := 0
	for _, p := range append([]string{a.Reason}, a.Props...) {
		if strings.ContainsAny(p, "\r\n\x00;") {
			return fmt.Errorf("authentication result %s: reason and properties must not contain CR, LF, NUL or ';'", a.Method)
		}
		n += len(p)
		if w, at := longestWord(p); w > MaxAuthResultWord {
			return fmt.Errorf("authentication result %s: %.20q... has %d characters without a space or tab from byte %d, at most %d (they must fit on one header line)", a.Method, p[at:], w, at, MaxAuthResultWord)
		}
	}
	if n > MaxEditFieldValue { // they go into one field (MaxEditFieldValue)
		return fmt.Errorf("authentication result %s: reason and properties too long: %d bytes, at most %d", a.Method, n, MaxEditFieldValue)
	}
	if len(a.Method)+len(a.Result) > MaxAuthResultWord {
		return fmt.Errorf("authentication result %.20s...: method and result too long: %d bytes, at most %d", a.Method, len(a.Method)+len(a.Result), MaxAuthResultWord)
	}
	return nil
}

// validFieldName reports whether s is an RFC 5322 field name, one
// textproto.WriteHeader writes: printable US-ASCII other than ':'.
func validFieldName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || c == ':' {
			return false
		}
	}
	return true
}

// isToken reports whether s is a non-empty run of NameChars.
func isToken(s string) bool { return s != "" && NameChars(s) }

// NameChars reports whether s holds only ASCII letters, digits, '.', '_'
// and '-': the characters of tenant names, Kafka topics and
// Authentication-Results method tokens. Callers add their own length
// rules.
func NameChars(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// ApplyEdits applies the edits stage made at hook to txn (and msg, once
// the content exists; before, header edits wait on txn). It refuses, with
// an *EditError, an edit the hook may not make, and rejects malformed
// names and values; on error nothing was applied. txn may be nil only
// when e is empty.
func ApplyEdits(stage, hook string, e *Edits, txn *Txn, msg *Message) error {
	if e.Empty() {
		return nil
	}
	if kind := e.check(hook); kind != "" {
		return &EditError{Stage: stage, Hook: hook, Kind: kind}
	}
	if err := e.validate(); err != nil {
		return fmt.Errorf("stage %q %s: %w", stage, hook, err)
	}
	if len(e.AuthResults) > 0 {
		if n := len(AuthenticationResults("", txn.AuthResults)) + len(AuthenticationResults("", e.AuthResults)); n > MaxEditFieldValue {
			return fmt.Errorf("stage %q %s: authentication results: the Authentication-Results field would hold %d bytes of results, at most %d (MaxEditFieldValue)", stage, hook, n, MaxEditFieldValue)
		}
	}
	for _, k := range sortedKeys(e.Meta) {
		txn.SetMeta(k, e.Meta[k])
	}
	for _, t := range e.Tags {
		txn.AddTag(t)
	}
	for _, k := range sortedKeys(e.Scratch) {
		if v := e.Scratch[k]; v == "" {
			delete(txn.Scratch, k)
		} else {
			if txn.Scratch == nil {
				txn.Scratch = make(map[string]string)
			}
			txn.Scratch[k] = v
		}
	}
	txn.AuthResults = append(txn.AuthResults, e.AuthResults...)
	if e.Track != nil {
		txn.Track = txn.Track.Merge(e.Track)
	}
	if e.RequireTLS != nil {
		txn.Params.RequireTLS = *e.RequireTLS
	}
	if len(e.Headers) > 0 {
		if msg == nil {
			txn.headerEdits = append(txn.headerEdits, e.Headers...)
		} else {
			ApplyHeaderEdits(&msg.Header, e.Headers)
		}
	}
	return nil
}

// ApplyHeaderEdits applies header edits to h in order.
func ApplyHeaderEdits(h *textproto.Header, edits []HeaderEdit) {
	for _, e := range edits {
		switch e.Op {
		case HeaderAdd:
			addField(h, e.Name, e.Value)
		case HeaderSet:
			h.Del(e.Name)
			addField(h, e.Name, e.Value)
		case HeaderRemove:
			h.Del(e.Name)
		}
	}
}

// AddHeaderField adds the field name: value on top of h, formatted once
// (FoldField: trimmed of blanks at both ends, folded at its own blanks in
// linear time) and stored with AddRaw, so writing the header (the
// spool's, a plugin's header block, delivery, the DKIM signer's hash)
// copies those bytes and formats nothing again. A value FoldField cannot
// fold within 998-character lines (a run of more than 997 characters
// without a blank) is written with a space inserted every 400 bytes of
// such a run (runs of blanks cut to 400): for the relay's own fields, such
// as Received, which must not be lost; header edits refuse such values
// before (ApplyEdits, CheckFold). A bad name or a value with line breaks
// goes to h.Add as it is (writing the header then fails, as it would for
// h.Add). Not safe for concurrent use with other uses of h.
func AddHeaderField(h *textproto.Header, name, value string) { addField(h, name, value) }

// addField is AddHeaderField.
func addField(h *textproto.Header, name, value string) {
	k := stdtextproto.CanonicalMIMEHeaderKey(name)
	raw, err := FoldField(k, value)
	if _, ok := err.(*FoldError); ok {
		raw, err = FoldField(k, relaxFold(value))
	}
	if err != nil {
		h.Add(name, value)
		return
	}
	h.AddRaw(raw)
}

// AuthenticationResults formats results as the value of one
// Authentication-Results field (RFC 8601 section 2.2) for authserv-id id:
// "id; spf=pass smtp.mailfrom=example.com; dkim=pass header.d=example.com".
// A reason is written as reason="..." with its double quotes made single
// and its backslashes made '/' (a '\' would quote the character after
// it, the closing quote among them, RFC 5322 section 3.2.4);
// in reasons and properties every run of spaces and tabs is written as
// one space, so the field folds at single spaces only and reads back as
// written (FoldField; AuthResult.Validate bounds the runs between).
func AuthenticationResults(id string, results []AuthResult) string {
	var b strings.Builder
	b.WriteString(id)
	for _, r := range results {
		b.WriteString("; ")
		b.WriteString(r.Method)
		b.WriteByte('=')
		b.WriteString(r.Result)
		if r.Reason != "" {
			b.WriteString(` reason="`)
			writeWords(&b, reasonQuote.Replace(r.Reason), false)
			b.WriteByte('"')
		}
		for _, p := range r.Props {
			writeWords(&b, p, true)
		}
	}
	return b.String()
}

// reasonQuote makes a reason fit between double quotes without quoted
// pairs, keeping its length (AuthResult.Validate bounds its words).
var reasonQuote = strings.NewReplacer(`"`, `'`, `\`, `/`)

// writeWords writes the words of s (split at spaces and tabs) separated
// by one space, with one before the first when lead is set.
func writeWords(b *strings.Builder, s string, lead bool) {
	for s != "" {
		s = strings.TrimLeft(s, " \t")
		i := strings.IndexAny(s, " \t")
		if i < 0 {
			i = len(s)
		}
		if i > 0 {
			if lead {
				b.WriteByte(' ')
			}
			b.WriteString(s[:i])
			lead = true
		}
		s = s[i:]
	}
}

// longestWord returns the length of the longest run of s without a space
// or tab, and where it starts.
func longestWord(s string) (n, at int) {
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ' ' || s[i] == '\t' {
			if i-start > n {
				n, at = i-start, start
			}
			start = i + 1
		}
	}
	return n, at
}

// MaxAuthResultWord is the longest run without a space or tab, in bytes,
// that the reason and each property of an authentication result may hold
// (AuthResult.Validate): with reason="...", the ';' after it and the blank
// that starts a folded line it stays within a 998-character line (RFC
// 5322 section 2.1.1), so the Authentication-Results field always folds.
const MaxAuthResultWord = 900

// sortedKeys returns m's keys in order (deterministic application).
func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// MaxEditFieldName is the longest field name a header edit may add or set
// (ApplyEdits refuses a longer one; removing takes any name). Sluice's
// own folding (FoldField) writes longer names, but the header travels on
// to plugins and other software, and go-message's textproto, which Go
// plugins and many Go MTAs use, panics writing a field of a longer name
// and a non-empty value (its folding finds no room on the first line,
// formatHeaderField in v0.18): the limit keeps every header Sluice
// passes on writable by them.
const MaxEditFieldName = 73

// MaxEditFieldValue is the longest value, in bytes, a header edit may add
// or set (ApplyEdits and the Lua functions refuse a longer one), and the
// longest Authentication-Results value the chain writes. Folding is linear
// (FoldField: about 5 ms a megabyte), so the cap is not for time but for
// what the field becomes: one field of the header, held in memory with
// the message at every stage and written into every copy of it, and cut
// short by receivers (Postfix keeps at most header_size_limit, 102,400
// bytes by default, of a field and drops the rest, which breaks a DKIM
// signature over it). 64 KiB is far above any real field.
const MaxEditFieldValue = 64 << 10
