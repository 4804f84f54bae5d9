// Package conv converts between the plugin protocol's messages
// (plugins/proto/stage/v1) and the Go types of package pipeline. The host
// (internal/plugin) and the Go SDK (plugins/sdk) both use it, so the two
// sides of the process boundary agree on every field. It is internal: plugin
// authors see only pipeline types.
package conv

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/emersion/go-message/textproto"

	"github.com/sluice-mta/sluice/pipeline"
	stagev1 "github.com/sluice-mta/sluice/plugins/proto/stage/v1"
)

// Hook names, in the pipeline's (Lua) spelling, by protocol hook.
var hookNames = map[stagev1.Hook]string{
	stagev1.Hook_HOOK_ON_CONNECT: "on_connect",
	stagev1.Hook_HOOK_ON_HELO:    "on_helo",
	stagev1.Hook_HOOK_ON_MAIL:    "on_mail",
	stagev1.Hook_HOOK_ON_RCPT:    "on_rcpt",
	stagev1.Hook_HOOK_ON_MESSAGE: "on_message",
	stagev1.Hook_HOOK_ON_ROUTE:   "on_route",
	stagev1.Hook_HOOK_ON_EVENT:   "on_event",
}

// HookName returns the pipeline name of h ("on_rcpt"), or "" for an unknown
// hook.
func HookName(h stagev1.Hook) string { return hookNames[h] }

// HookFromName returns the protocol hook of a pipeline hook name, or
// HOOK_UNSPECIFIED. It allocates nothing (the host calls it per call).
func HookFromName(name string) stagev1.Hook {
	switch name {
	case "on_connect":
		return stagev1.Hook_HOOK_ON_CONNECT
	case "on_helo":
		return stagev1.Hook_HOOK_ON_HELO
	case "on_mail":
		return stagev1.Hook_HOOK_ON_MAIL
	case "on_rcpt":
		return stagev1.Hook_HOOK_ON_RCPT
	case "on_message":
		return stagev1.Hook_HOOK_ON_MESSAGE
	case "on_route":
		return stagev1.Hook_HOOK_ON_ROUTE
	case "on_event":
		return stagev1.Hook_HOOK_ON_EVENT
	}
	return stagev1.Hook_HOOK_UNSPECIFIED
}

// Identity converts an identity; nil stays nil.
func Identity(id *pipeline.Identity) *stagev1.Identity {
	if id == nil {
		return nil
	}
	return &stagev1.Identity{Name: id.Name, Tenant: id.Tenant, Method: id.Method, Scopes: id.Scopes, Senders: id.Senders}
}

// IdentityFrom is the inverse of Identity.
func IdentityFrom(p *stagev1.Identity) *pipeline.Identity {
	if p == nil {
		return nil
	}
	return &pipeline.Identity{Name: p.Name, Tenant: p.Tenant, Method: p.Method, Scopes: p.Scopes, Senders: p.Senders}
}

// Conn converts a connection; nil stays nil.
func Conn(c *pipeline.Conn) *stagev1.Conn {
	if c == nil {
		return nil
	}
	return connTo(new(stagev1.Conn), c)
}

// connTo is Conn into p (not nil), which is overwritten.
func connTo(p *stagev1.Conn, c *pipeline.Conn) *stagev1.Conn {
	*p = stagev1.Conn{Id: c.ID, Source: c.Source, Listener: c.Listener, ServerName: c.ServerName,
		RemotePort: uint32(c.RemotePort), Helo: c.HELO, Tls: c.TLS, Identity: Identity(c.Identity), RelayNetwork: c.RelayNetwork}
	if c.RemoteIP.IsValid() {
		p.RemoteIp = c.RemoteIP.String()
	}
	return p
}

// ConnFrom is the inverse of Conn. An unparsable remote_ip is left zero.
func ConnFrom(p *stagev1.Conn) *pipeline.Conn {
	if p == nil {
		return nil
	}
	c := &pipeline.Conn{ID: p.Id, Source: p.Source, Listener: p.Listener, ServerName: p.ServerName,
		RemotePort: uint16(p.RemotePort), HELO: p.Helo, TLS: p.Tls, Identity: IdentityFrom(p.Identity), RelayNetwork: p.RelayNetwork}
	if p.RemoteIp != "" {
		c.RemoteIP, _ = netip.ParseAddr(p.RemoteIp)
	}
	return c
}

// Route converts a route; nil stays nil.
func Route(r *pipeline.Route) *stagev1.Route {
	if r == nil {
		return nil
	}
	return &stagev1.Route{Kind: r.Kind, Host: r.Host, Port: int32(r.Port), Tls: r.TLS, AuthUser: r.AuthUser, AuthPass: r.AuthPass}
}

// RouteFrom is the inverse of Route.
func RouteFrom(p *stagev1.Route) *pipeline.Route {
	if p == nil {
		return nil
	}
	return &pipeline.Route{Kind: p.Kind, Host: p.Host, Port: int(p.Port), TLS: p.Tls, AuthUser: p.AuthUser, AuthPass: p.AuthPass}
}

// Recipient converts a recipient; nil stays nil.
func Recipient(r *pipeline.Recipient) *stagev1.Recipient {
	if r == nil {
		return nil
	}
	return &stagev1.Recipient{Address: r.Address, Local: r.Local, Domain: r.Domain, Relay: r.Relay, Route: Route(r.Route),
		Params: &stagev1.RcptParams{Notify: r.Params.Notify, Orcpt: r.Params.ORCPT}}
}

// RecipientFrom is the inverse of Recipient.
func RecipientFrom(p *stagev1.Recipient) *pipeline.Recipient {
	if p == nil {
		return nil
	}
	r := &pipeline.Recipient{Address: p.Address, Local: p.Local, Domain: p.Domain, Relay: p.Relay, Route: RouteFrom(p.Route)}
	if p.Params != nil {
		r.Params = pipeline.RcptParams{Notify: p.Params.Notify, ORCPT: p.Params.Orcpt}
	}
	return r
}

func authResults(in []pipeline.AuthResult) []*stagev1.AuthResult {
	if len(in) == 0 {
		return nil
	}
	out := make([]*stagev1.AuthResult, len(in))
	for i, a := range in {
		out[i] = &stagev1.AuthResult{Method: a.Method, Result: a.Result, Reason: a.Reason, Props: a.Props}
	}
	return out
}

func authResultsFrom(in []*stagev1.AuthResult) []pipeline.AuthResult {
	if len(in) == 0 {
		return nil
	}
	out := make([]pipeline.AuthResult, len(in))
	for i, a := range in {
		out[i] = pipeline.AuthResult{Method: a.Method, Result: a.Result, Reason: a.Reason, Props: a.Props}
	}
	return out
}

// Txn converts a transaction with its connection; nil stays nil.
func Txn(t *pipeline.Txn) *stagev1.Txn {
	if t == nil {
		return nil
	}
	return TxnTo(new(TxnParts), t)
}

// TxnParts is where TxnTo builds a transaction: the message and the
// parts it points to, allocated (or pooled) as one.
type TxnParts struct {
	Txn    stagev1.Txn
	Conn   stagev1.Conn
	Params stagev1.MailParams
}

// TxnTo is Txn built in into (not nil), whose previous contents are
// overwritten; the result is &into.Txn, or nil for a nil t.
func TxnTo(into *TxnParts, t *pipeline.Txn) *stagev1.Txn {
	if t == nil {
		return nil
	}
	into.Params = stagev1.MailParams{Body: t.Params.Body, Smtputf8: t.Params.SMTPUTF8, Ret: t.Params.Ret, Envid: t.Params.EnvID,
		RequireTls: t.Params.RequireTLS}
	p := &into.Txn
	*p = stagev1.Txn{Id: t.ID, Sender: t.Sender, Params: &into.Params,
		Meta: t.Meta, Tags: t.Tags, Scratch: t.Scratch, AuthResults: authResults(t.AuthResults)}
	if t.Conn != nil {
		p.Conn = connTo(&into.Conn, t.Conn)
	}
	if !t.Received.IsZero() {
		p.ReceivedUnixNano = t.Received.UnixNano()
	}
	if len(t.Recipients) > 0 {
		p.Recipients = make([]*stagev1.Recipient, len(t.Recipients))
		for i, r := range t.Recipients {
			p.Recipients[i] = Recipient(r)
		}
	}
	return p
}

// TxnFrom is the inverse of Txn.
func TxnFrom(p *stagev1.Txn) *pipeline.Txn {
	if p == nil {
		return nil
	}
	t := &pipeline.Txn{Conn: ConnFrom(p.Conn), ID: p.Id, Sender: p.Sender, Meta: p.Meta, Tags: p.Tags,
		Scratch: p.Scratch, AuthResults: authResultsFrom(p.AuthResults)}
	if t.Conn == nil {
		t.Conn = &pipeline.Conn{}
	}
	if p.Params != nil {
		t.Params = pipeline.MailParams{Body: p.Params.Body, SMTPUTF8: p.Params.Smtputf8, Ret: p.Params.Ret, EnvID: p.Params.Envid,
			RequireTLS: p.Params.RequireTls}
	}
	if p.ReceivedUnixNano != 0 {
		t.Received = time.Unix(0, p.ReceivedUnixNano).UTC()
	}
	for _, r := range p.Recipients {
		t.Recipients = append(t.Recipients, RecipientFrom(r))
	}
	return t
}

// Message converts a message, with its header when need is HEADERS or
// FULL and its body when need is FULL. The header goes as one entry per
// field, for plugins of protocol 1.0 and 1.1; MessageBlock sends it as one
// block. The body is not copied.
func Message(m *pipeline.Message, need stagev1.BodyNeed) *stagev1.Message {
	if m == nil {
		return nil
	}
	p := &stagev1.Message{Txn: Txn(m.Txn)}
	if need == stagev1.BodyNeed_BODY_NEED_ENVELOPE {
		return p
	}
	p.HasHeader = true
	p.Header = headerFields(m.Header)
	if need == stagev1.BodyNeed_BODY_NEED_FULL {
		p.HasBody = true
		p.Body = m.Body
	}
	return p
}

// headerFields converts a header to one entry per field, in order.
func headerFields(h textproto.Header) []*stagev1.HeaderField {
	out := make([]*stagev1.HeaderField, 0, h.Len())
	for f := h.Fields(); f.Next(); {
		raw, err := f.Raw()
		if err != nil {
			raw = []byte(f.Key() + ": " + f.Value())
		}
		raw = bytes.TrimRight(raw, "\r\n")
		out = append(out, &stagev1.HeaderField{Name: f.Key(), Value: f.Value(), Raw: raw})
	}
	return out
}

// HeaderFields converts a header block (Message.header_block) to one entry
// per field, as Message sends them.
func HeaderFields(block []byte) ([]*stagev1.HeaderField, error) {
	m, err := pipeline.ParseMessage(nil, block)
	if err != nil {
		return nil, err
	}
	if len(m.Body) > 0 {
		return nil, fmt.Errorf("header block: %d bytes after the header fields", len(m.Body))
	}
	return headerFields(m.Header), nil
}

// MessageBlock is Message for plugins that read the header as one block
// (DescribeResponse.header_block, protocol 1.2): the header section is
// written into buf (reset first), as Message.Bytes writes it, and sent as
// Message.header_block; buf must not change until the request is sent.
// One block costs a fraction of one entry (three strings) per field to
// build, encode and decode.
func MessageBlock(m *pipeline.Message, need stagev1.BodyNeed, buf *bytes.Buffer) (*stagev1.Message, error) {
	return MessageBlockTo(new(MessageParts), m, need, buf)
}

// MessageParts is where MessageBlockTo builds a message.
type MessageParts struct {
	Message stagev1.Message
	TxnParts
}

// MessageBlockTo is MessageBlock built in into (not nil), whose previous
// contents are overwritten: one allocation (or none, into being pooled)
// instead of four.
func MessageBlockTo(into *MessageParts, m *pipeline.Message, need stagev1.BodyNeed, buf *bytes.Buffer) (*stagev1.Message, error) {
	if m == nil {
		return nil, nil
	}
	p := &into.Message
	*p = stagev1.Message{Txn: TxnTo(&into.TxnParts, m.Txn)}
	if need == stagev1.BodyNeed_BODY_NEED_ENVELOPE {
		return p, nil
	}
	buf.Reset()
	if err := textproto.WriteHeader(buf, m.Header); err != nil {
		return nil, fmt.Errorf("header: %w", err)
	}
	p.HasHeader, p.HeaderBlock = true, buf.Bytes()
	if need == stagev1.BodyNeed_BODY_NEED_FULL {
		p.HasBody = true
		p.Body = m.Body
	}
	return p, nil
}

// MessageFrom rebuilds a message: its header from header_block or else
// from the raw fields (so folding and order survive), its body as sent (nil
// when not sent). The header block is parsed in place, not copied: m's
// header refers to p's bytes.
func MessageFrom(p *stagev1.Message) (*pipeline.Message, error) {
	return messageFrom(p, false)
}

// MessageFromUnparsed is MessageFrom for hooks that read the header
// through Message.HeaderValue (or parse it themselves with
// Message.ParseHeader): a well-formed header block is kept unparsed
// (pipeline.NewMessageUnparsed), which costs no allocation per field; a
// header sent as fields, or a block that is not well formed, is parsed as
// MessageFrom parses it.
func MessageFromUnparsed(p *stagev1.Message) (*pipeline.Message, error) {
	return messageFrom(p, true)
}

func messageFrom(p *stagev1.Message, unparsed bool) (*pipeline.Message, error) {
	if p == nil {
		return nil, fmt.Errorf("no message")
	}
	txn := TxnFrom(p.Txn)
	if txn == nil {
		txn = &pipeline.Txn{Conn: &pipeline.Conn{}}
	}
	// The decoder may leave these pointing into the one buffer the whole
	// request was decoded from (sdk.Codec): clipped, an append to the
	// message's body (addBody's, or a hook's) copies instead of writing
	// over the fields that follow in that buffer.
	p.HeaderBlock, p.Body = slices.Clip(p.HeaderBlock), slices.Clip(p.Body)
	if len(p.HeaderBlock) > 0 {
		if unparsed {
			if m, ok := pipeline.NewMessageUnparsed(txn, p.HeaderBlock, p.Body); ok {
				return m, nil
			}
		}
		if h, ok := pipeline.ParseHeaderBlock(p.HeaderBlock); ok {
			return addBody(&pipeline.Message{Txn: txn, Header: h}, p.Body), nil
		}
		m, err := pipeline.ParseMessage(txn, p.HeaderBlock)
		if err != nil {
			return nil, err
		}
		return addBody(m, p.Body), nil
	}
	n := 2
	for _, f := range p.Header {
		n += len(f.Raw) + len(f.Name) + len(f.Value) + 4
	}
	buf := make([]byte, 0, n)
	for _, f := range p.Header {
		if len(f.Raw) > 0 {
			buf = append(buf, f.Raw...)
		} else {
			buf = append(append(append(buf, f.Name...), ": "...), f.Value...)
		}
		buf = append(buf, "\r\n"...)
	}
	buf = append(buf, "\r\n"...)
	// The header alone is parsed; the body is used as received, not
	// copied (it may be tens of megabytes).
	m, err := pipeline.ParseMessage(txn, buf)
	if err != nil {
		return nil, err
	}
	return addBody(m, p.Body), nil
}

// addBody gives m, parsed from the header alone, the body that was sent
// apart from it.
func addBody(m *pipeline.Message, body []byte) *pipeline.Message {
	if len(m.Body) == 0 {
		m.Body = body
	} else if len(body) > 0 { // lines ParseMessage did not take as a header are body
		m.Body = append(m.Body, body...)
	}
	return m
}

// Edits converts edits; empty edits become nil.
func Edits(e *pipeline.Edits) *stagev1.Edits {
	if e.Empty() {
		return nil
	}
	p := &stagev1.Edits{Meta: e.Meta, Tags: e.Tags, Scratch: e.Scratch, AuthResults: authResults(e.AuthResults)}
	switch {
	case e.RequireTLS == nil:
	case *e.RequireTLS:
		p.RequireTls = stagev1.FlagEdit_FLAG_SET
	default:
		p.RequireTls = stagev1.FlagEdit_FLAG_CLEAR
	}
	for _, h := range e.Headers {
		p.Headers = append(p.Headers, &stagev1.HeaderEdit{Op: h.Op, Name: h.Name, Value: h.Value})
	}
	return p
}

// EditsFrom is the inverse of Edits.
func EditsFrom(p *stagev1.Edits) pipeline.Edits {
	var e pipeline.Edits
	if p == nil {
		return e
	}
	e.Meta, e.Tags, e.Scratch, e.AuthResults = p.Meta, p.Tags, p.Scratch, authResultsFrom(p.AuthResults)
	switch p.RequireTls {
	case stagev1.FlagEdit_FLAG_SET:
		e.RequireTLS = new(bool)
		*e.RequireTLS = true
	case stagev1.FlagEdit_FLAG_CLEAR:
		e.RequireTLS = new(bool)
	}
	for _, h := range p.Headers {
		e.Headers = append(e.Headers, pipeline.HeaderEdit{Op: h.Op, Name: h.Name, Value: h.Value})
	}
	return e
}

// Verdict converts a verdict.
func Verdict(v pipeline.Verdict) *stagev1.Verdict {
	p := &stagev1.Verdict{Action: stagev1.Action(v.Action), Code: int32(v.Code), Text: v.Text, Route: Route(v.Route), Edits: Edits(&v.Edits)}
	if v.Enhanced != (pipeline.EnhancedCode{}) {
		p.Enhanced = []int32{int32(v.Enhanced[0]), int32(v.Enhanced[1]), int32(v.Enhanced[2])}
	}
	return p
}

// VerdictFrom is the inverse of Verdict. It refuses an unknown action, an
// enhanced code that is not three numbers, and a route that does not
// validate: a plugin's bad answer is a stage failure, never guessed at.
func VerdictFrom(p *stagev1.Verdict) (pipeline.Verdict, error) {
	if p == nil {
		return pipeline.Verdict{}, nil
	}
	if p.Action < stagev1.Action_ACTION_CONTINUE || p.Action > stagev1.Action_ACTION_DISCARD {
		return pipeline.Verdict{}, fmt.Errorf("verdict: unknown action %d", p.Action)
	}
	v := pipeline.Verdict{Action: pipeline.Action(p.Action), Code: int(p.Code), Text: p.Text, Route: RouteFrom(p.Route), Edits: EditsFrom(p.Edits)}
	switch len(p.Enhanced) {
	case 0:
	case 3:
		v.Enhanced = pipeline.EnhancedCode{int(p.Enhanced[0]), int(p.Enhanced[1]), int(p.Enhanced[2])}
	default:
		return pipeline.Verdict{}, fmt.Errorf("verdict: enhanced code %v: want three numbers such as [5, 7, 1]", p.Enhanced)
	}
	if v.Route != nil {
		if err := v.Route.Validate(); err != nil {
			return pipeline.Verdict{}, fmt.Errorf("verdict: %w", err)
		}
	}
	return v, nil
}

// Event converts an event to its public JSON form.
func Event(ev *pipeline.Event) (*stagev1.EventRequest, error) {
	b, err := json.Marshal(ev)
	if err != nil {
		return nil, err
	}
	return &stagev1.EventRequest{EventJson: b}, nil
}

// EventFrom is the inverse of Event.
func EventFrom(p *stagev1.EventRequest) (*pipeline.Event, error) {
	var ev pipeline.Event
	if err := json.Unmarshal(p.EventJson, &ev); err != nil {
		return nil, fmt.Errorf("event: %w", err)
	}
	return &ev, nil
}
