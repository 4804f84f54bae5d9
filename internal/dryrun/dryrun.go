// Package dryrun runs one message through a configuration's pipeline
// without spooling or delivering it, and records what happened: every
// stage hook call with its verdict and edits, the route chosen for each
// recipient, the events that would be written and the reply the client
// would have seen. It is `sluice test`.
//
// The pipeline is the one serve builds (server.BuildTracedPipeline: Lua
// scripts, built-ins and plugin processes run for real) and the
// transaction is driven through the same relay.Session and relay.Txn the
// SMTP and HTTP sources use; only the relay's Store is replaced by one
// that keeps what would be written in memory. So a dry run sees what a
// real client would, with these differences, all documented in
// docs/operating.md: the suppression list is not consulted, no password
// is checked: --auth USER stands for a successful login as USER (with
// the users file's tenant and allowed senders when it lists USER; on_auth
// stages still run and may refuse or replace it), and nothing reaches the
// spool, the queue or the event sinks.
//
// It is not a load or delivery test: no socket is opened except by
// stages themselves (DNS lookups, plugin processes, Redis).
package dryrun

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/mail"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/sluice-mta/sluice/internal/auth"
	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/httpapi"
	"github.com/sluice-mta/sluice/internal/mtasts"
	"github.com/sluice-mta/sluice/internal/relay"
	"github.com/sluice-mta/sluice/internal/server"
	"github.com/sluice-mta/sluice/internal/smtpsrc"
	"github.com/sluice-mta/sluice/pipeline"
)

// Options describe the client and the message of a dry run.
type Options struct {
	// Source is pipeline.SourceSMTP (default) or pipeline.SourceHTTP.
	Source string
	// RemoteIP is the client's address; default 127.0.0.1. For SMTP it
	// is checked against the listener's relay_networks.
	RemoteIP netip.Addr
	// Listener names the SMTP listener the client connects to (its name
	// or address): its relay_networks and hostname apply. Default: the
	// first SMTP listener.
	Listener string
	// HELO is the name the SMTP client gives; default "client.example".
	HELO string
	// Auth, when set, makes the client authenticated as this user (SMTP
	// AUTH) or API key id (HTTP) before MAIL; on_auth stages run and may
	// refuse or replace the identity. HTTP requires it.
	Auth string
	// From is the envelope sender ("" is the null sender when Data is
	// nil; with Data, "" means the address of its From field).
	From string
	// To are the recipients; with Data and none given, the addresses of
	// its To and Cc fields.
	To []string
	// Data is the message (RFC 5322); nil means a small generated one.
	Data []byte
	// Now is the clock (Received and Date fields); default time.Now.
	// Tests fix it for golden files.
	Now func() time.Time
}

// Call is one stage hook call.
type Call struct {
	Stage     string          `json:"stage"`
	Hook      string          `json:"hook"`
	Recipient string          `json:"recipient,omitempty"`
	Verdict   string          `json:"verdict"` // continue, accept, reject, tempfail, discard, error
	Code      int             `json:"code,omitempty"`
	Enhanced  string          `json:"enhanced,omitempty"`
	Text      string          `json:"text,omitempty"`
	Route     *pipeline.Route `json:"route,omitempty"`
	Edits     *pipeline.Edits `json:"edits,omitempty"`
	// Error is the stage's own failure (the client sees a generic 451).
	Error string `json:"error,omitempty"`
	// DSN marks a call for the delivery status notification Sluice
	// generated while committing the message (recipients refused at
	// on_route): it enters the pipeline as a message of its own.
	DSN bool `json:"dsn,omitempty"`

	msgID string
}

// Reply is what the client would have seen at one step.
type Reply struct {
	Step     string `json:"step"` // connect, helo, auth, mail, rcpt, data
	Code     int    `json:"code"` // SMTP code (also for HTTP: the pipeline's answer)
	Enhanced string `json:"enhanced"`
	Text     string `json:"text"`
	// HTTPStatus and HTTPCode are the HTTP API's answer (source http).
	HTTPStatus int    `json:"http_status,omitempty"`
	HTTPCode   string `json:"http_code,omitempty"`
}

// Recipient is one recipient's outcome.
type Recipient struct {
	Address string          `json:"address"`
	Status  string          `json:"status"` // queued, rejected, discarded
	Route   *pipeline.Route `json:"route,omitempty"`
	Queue   string          `json:"queue,omitempty"`
	Reply   *Reply          `json:"reply,omitempty"` // refused: its reply
	// MX is the answer to the MX lookup of an MX route (Route only).
	MX    []MXHost `json:"mx,omitempty"`
	MXErr string   `json:"mx_error,omitempty"`
	// TLS is the TLS policy delivery would apply (MX and relay routes,
	// Route only): the route's, the domain's MTA-STS policy, each
	// host's DANE records.
	TLS *delivery.TLSPlan `json:"tls,omitempty"`
}

// MXHost is one MX record, as DNS sent it.
type MXHost struct {
	Host string `json:"host"`
	Pref uint16 `json:"pref"`
}

// Event is an event the run would have written.
type Event struct {
	Type      string `json:"type"`
	Recipient string `json:"recipient,omitempty"`
	Queue     string `json:"queue,omitempty"`
	Code      int    `json:"code,omitempty"`
	DSN       bool   `json:"dsn,omitempty"` // an event of the DSN (see Call.DSN)
}

// Trace is the outcome of a dry run.
type Trace struct {
	Config     string      `json:"config"`
	Source     string      `json:"source"`
	Client     Client      `json:"client"`
	MessageID  string      `json:"message_id,omitempty"`
	Calls      []Call      `json:"calls"`
	Recipients []Recipient `json:"recipients"`
	Events     []Event     `json:"events"`
	// Added are the header fields the pipeline added or set (Received
	// included), in the order they appear in the final message.
	Added []string `json:"added_header_fields,omitempty"`
	// Reply is the client's answer (for a route query, only a refusal).
	Reply *Reply `json:"reply,omitempty"`
}

// Client describes the simulated client.
type Client struct {
	IP           string `json:"ip"`
	HELO         string `json:"helo,omitempty"`
	Identity     string `json:"identity,omitempty"`
	Tenant       string `json:"tenant,omitempty"`
	RelayNetwork bool   `json:"relay_network,omitempty"`
}

// recorder collects trace calls; the chain calls it on the goroutine of
// the stage call, and a run makes its calls one at a time, but the lock
// keeps a stage that calls back from another goroutine safe.
type recorder struct {
	mu    sync.Mutex
	calls []Call
}

func (r *recorder) trace(tc pipeline.TraceCall) {
	c := Call{Stage: tc.Stage, Hook: tc.Hook, Recipient: tc.Recipient, Verdict: tc.Verdict.Action.String(), msgID: tc.MessageID}
	v := tc.Verdict
	if tc.Err != nil {
		c.Verdict, c.Error = "error", tc.Err.Error()
		var pe *pipeline.Error
		if errors.As(tc.Err, &pe) {
			c.Code, c.Enhanced, c.Text = pe.Code, pe.Enhanced.String(), pe.Message
		}
	} else if e := v.Err(tc.Stage); e != nil {
		c.Code, c.Enhanced, c.Text = e.Code, e.Enhanced.String(), e.Message
	} else if v.Action == pipeline.Discard {
		c.Text = v.Text
	}
	if v.Route != nil {
		c.Route = redact(v.Route)
	}
	if !v.Edits.Empty() {
		e := v.Edits
		c.Edits = &e
	}
	r.mu.Lock()
	r.calls = append(r.calls, c)
	r.mu.Unlock()
}

func (r *recorder) take() []Call {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.calls
	r.calls = nil
	if out == nil {
		out = []Call{}
	}
	return out
}

// redact copies rt without its relay password.
func redact(rt *pipeline.Route) *pipeline.Route {
	c := *rt
	if c.AuthPass != "" {
		c.AuthPass = "(redacted)"
	}
	return &c
}

// Runner is a configuration's pipeline built for dry runs. Close it.
// Its Run and Route calls must not overlap: the trace of a call is what
// the chain observed between its start and its end.
type Runner struct {
	cfg  *config.Config
	res  *dnsx.Client
	dial *delivery.Dialer
	pipe *relay.Pipeline
	rec  *recorder
	log  *slog.Logger
}

// New builds cfg's pipeline with a tracing chain. resolver, when not
// empty, replaces sluice.delivery's resolver (host:port) for the stages
// and for MX lookups. log receives the stages' logs (nil: discarded).
func New(cfg *config.Config, resolver string, log *slog.Logger) (*Runner, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if resolver != "" {
		cfg.Delivery.Resolver = resolver
	}
	res, err := server.Resolver(cfg)
	if err != nil {
		return nil, err
	}
	rec := &recorder{}
	p, err := server.BuildTracedPipeline(cfg, log, res, rec.trace)
	if err != nil {
		return nil, err
	}
	d := delivery.NewDialer(cfg.Delivery, res)
	if !cfg.Delivery.NoMTASTS {
		d.MTASTS = &mtasts.Cache{Resolver: res}
	}
	d.DANE = cfg.Delivery.DANE
	return &Runner{cfg: cfg, res: res, dial: d, pipe: p, rec: rec, log: log}, nil
}

// Close stops the pipeline's stages (plugin processes included).
func (r *Runner) Close() { relay.ClosePipeline(r.pipe) }

// memStore is the relay's Store for a dry run: it keeps what would be
// written.
type memStore struct {
	mu     sync.Mutex
	n      int
	accs   []*relay.Accepted
	events []*pipeline.Event
}

func (s *memStore) NewID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	return fmt.Sprintf("DRYRUN%020d", s.n)
}

func (s *memStore) Commit(_ context.Context, accs []*relay.Accepted, _ relay.BeforeCommit) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.accs = append(s.accs, accs...)
	for _, a := range accs {
		s.events = append(s.events, a.Events...)
		if a.Bounce != nil {
			s.events = append(s.events, a.Bounce.Events...)
		}
	}
	return nil
}

func (s *memStore) Record(evs []*pipeline.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, evs...)
	return nil
}

// Run runs one message through the pipeline as o describes. The error is
// for bad options only; refusals are in the trace.
func (r *Runner) Run(ctx context.Context, o Options) (*Trace, error) {
	if err := o.fill(); err != nil {
		return nil, err
	}
	store := &memStore{}
	rl := relay.New(r.pipe, store, relay.Options{Hostname: r.cfg.Hostname, Logger: r.log, Now: o.Now})
	conn, err := r.conn(o)
	if err != nil {
		return nil, err
	}
	tr := &Trace{Config: r.cfg.File, Source: o.Source, Client: Client{IP: conn.RemoteIP.String(), RelayNetwork: conn.RelayNetwork}}
	defer func() {
		tr.Calls = r.rec.take()
		for i, c := range tr.Calls {
			tr.Calls[i].DSN = c.msgID != "" && c.msgID != tr.MessageID
		}
		for _, ev := range store.events {
			e := Event{Type: ev.Type, Recipient: ev.Recipient, Queue: ev.Queue, DSN: ev.MessageID != tr.MessageID}
			if ev.Response != nil && ev.Type == pipeline.EventRejected {
				e.Code = ev.Response.Code
			}
			tr.Events = append(tr.Events, e)
		}
		if tr.Recipients == nil {
			tr.Recipients = []Recipient{}
		}
		if tr.Events == nil {
			tr.Events = []Event{}
		}
	}()
	r.rec.take() // calls made while building (none today) are not this run's
	sess := rl.NewSession(conn)
	http := o.Source == pipeline.SourceHTTP
	if err := sess.Connect(ctx); err != nil {
		tr.Reply = ptr(reply("connect", err, "", http, true))
		return tr, nil
	}
	if !http {
		tr.Client.HELO = o.HELO
		if err := sess.Helo(ctx, o.HELO); err != nil {
			tr.Reply = ptr(reply("helo", err, "", http, true))
			return tr, nil
		}
	}
	if o.Auth != "" {
		cr := &pipeline.Credentials{Mechanism: "APIKEY", Username: o.Auth}
		id := &pipeline.Identity{Name: o.Auth, Method: "apikey", Scopes: []string{"send"}}
		if !http {
			cr = &pipeline.Credentials{Mechanism: "PLAIN", Username: o.Auth}
			if id, err = r.smtpIdentity(o.Auth); err != nil {
				return nil, err
			}
		}
		nid, err := sess.Verified(ctx, cr, id)
		if err != nil {
			tr.Reply = ptr(reply("auth", err, "", http, true))
			return tr, nil
		}
		conn.Identity = nid
		tr.Client.Identity, tr.Client.Tenant = nid.Name, nid.Tenant
	}
	txn, err := sess.Begin(ctx, o.From, nil, nil)
	tr.MessageID = txn.ID()
	if err != nil {
		tr.Reply = ptr(reply("mail", err, "", http, false))
		return tr, nil
	}
	var firstRefusal error
	for _, to := range o.To {
		if _, err := txn.Rcpt(ctx, to); err != nil {
			rp := reply("rcpt", err, "", http, false)
			tr.Recipients = append(tr.Recipients, Recipient{Address: to, Status: relay.StatusRejected, Reply: &rp})
			if firstRefusal == nil {
				firstRefusal = err
			}
		}
	}
	if len(txn.T.Recipients) == 0 {
		// Every recipient refused: the HTTP API answers with the first
		// refusal; an SMTP client has seen each one.
		txn.Abort()
		tr.Reply = ptr(reply("rcpt", firstRefusal, "", http, false))
		return tr, nil
	}
	msg, err := pipeline.ParseMessage(txn.T, o.Data)
	if err != nil {
		tr.Reply = ptr(reply("data", txn.Refuse(ctx, len(o.Data), err), "", http, false))
		return tr, nil
	}
	orig := fieldSet(msg)
	rc, err := txn.Commit(ctx, msg, relay.CommitOptions{OneReply: !http})
	tr.Reply = ptr(reply("data", err, txn.ID(), http, false))
	if err == nil && http {
		tr.Reply.HTTPStatus = 202
	}
	tr.Added = added(msg, orig)
	routes := map[string]*Recipient{}
	for _, a := range store.accs {
		for _, sr := range a.Rcpts {
			routes[sr.Address] = &Recipient{Address: sr.Address, Status: relay.StatusQueued, Route: redact(sr.Route), Queue: sr.Route.QueueName(sr.Domain)}
		}
	}
	if rc != nil {
		for _, res := range rc.Recipients {
			out := Recipient{Address: res.Address, Status: res.Status}
			if q, ok := routes[res.Address]; ok {
				out = *q
			}
			if res.Err != nil {
				rp := reply("data", res.Err, "", http, false)
				out.Reply = &rp
			}
			tr.Recipients = append(tr.Recipients, out)
		}
	} else {
		for _, rcpt := range txn.T.Recipients {
			rp := *tr.Reply
			tr.Recipients = append(tr.Recipients, Recipient{Address: rcpt.Address, Status: relay.StatusRejected, Reply: &rp})
		}
	}
	return tr, nil
}

// smtpIdentity is the identity of an SMTP client logged in as user: the
// users file's (sluice.auth users: tenant, allowed senders) when it lists
// user, else a bare one that on_auth stages may replace.
func (r *Runner) smtpIdentity(user string) (*pipeline.Identity, error) {
	if r.cfg.Auth.Users != "" {
		users, err := auth.OpenUsers(r.cfg.Auth.Users, r.log)
		if err != nil {
			return nil, fmt.Errorf("sluice.auth: %w", err)
		}
		if u := users.Lookup(user); u != nil {
			return u.Identity(), nil
		}
	}
	return &pipeline.Identity{Name: user, Method: auth.MethodSMTPAuth}, nil
}

// conn is the simulated client's connection, on the SMTP listener
// o.Listener names (its name or address; default the first).
func (r *Runner) conn(o Options) (*pipeline.Conn, error) {
	c := &pipeline.Conn{Source: o.Source, RemoteIP: o.RemoteIP, ServerName: r.cfg.Hostname, ID: "dryrun"}
	if o.Source == pipeline.SourceHTTP {
		if len(r.cfg.HTTP) > 0 {
			c.Listener = r.cfg.HTTP[0].Addr
		}
		return c, nil
	}
	var names []string
	for i, l := range r.cfg.SMTP {
		name := l.Name
		if name == "" {
			name = l.Addr
		}
		names = append(names, name)
		if o.Listener != "" && o.Listener != name && o.Listener != l.Addr || o.Listener == "" && i > 0 {
			continue
		}
		c.Listener = name
		if l.Hostname != "" {
			c.ServerName = l.Hostname
		}
		for _, p := range l.RelayNetworks {
			if p.Contains(o.RemoteIP) {
				c.RelayNetwork = true
			}
		}
		return c, nil
	}
	if o.Listener != "" {
		return nil, fmt.Errorf("no SMTP listener named %q (have: %s)", o.Listener, strings.Join(names, ", "))
	}
	return c, nil
}

// reply is the client's answer at step: the SMTP reply through the SMTP
// source's own boundary, and for HTTP also the status the API answers.
func reply(step string, err error, id string, http, access bool) Reply {
	code, enh, text := smtpsrc.ClientReply(err, id)
	rp := Reply{Step: step, Code: code, Enhanced: enh.String(), Text: text}
	if http && err != nil {
		rp.HTTPStatus, rp.HTTPCode = httpapi.ClientStatus(err, access)
	}
	return rp
}

// fill checks o and fills defaults and the message.
func (o *Options) fill() error {
	switch o.Source {
	case "":
		o.Source = pipeline.SourceSMTP
	case pipeline.SourceSMTP, pipeline.SourceHTTP:
	default:
		return fmt.Errorf("source %q: want smtp or http", o.Source)
	}
	if o.Source == pipeline.SourceHTTP && o.Auth == "" {
		return errors.New("source http needs an identity (--auth KEYID): the HTTP API serves only authenticated clients")
	}
	if !o.RemoteIP.IsValid() {
		o.RemoteIP = netip.MustParseAddr("127.0.0.1")
	}
	if o.HELO == "" {
		o.HELO = "client.example"
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Data != nil {
		if len(o.Data) == 0 {
			return errors.New("message: the message is empty")
		}
		m, err := mail.ReadMessage(strings.NewReader(string(o.Data)))
		if err != nil {
			// The error quotes the offending line, which may be any
			// bytes of any length: print a quoted start of it.
			return fmt.Errorf("message: not an RFC 5322 message: %.120q", err.Error())
		}
		if o.From == "" {
			if a, err := mail.ParseAddress(m.Header.Get("From")); err == nil {
				o.From = a.Address
			}
		}
		if len(o.To) == 0 {
			for _, f := range []string{"To", "Cc"} {
				if l, err := m.Header.AddressList(f); err == nil {
					for _, a := range l {
						o.To = append(o.To, a.Address)
					}
				}
			}
		}
	}
	if len(o.To) == 0 {
		return errors.New("no recipient: give --to ADDRESS (or a message with To: fields)")
	}
	if o.Data == nil {
		o.Data = []byte(fmt.Sprintf("From: <%s>\r\nTo: <%s>\r\nSubject: sluice test\r\nDate: %s\r\nMessage-ID: <dryrun@sluice.invalid>\r\n\r\nA test message from sluice test.\r\n",
			o.From, strings.Join(o.To, ">, <"), o.Now().UTC().Format(time.RFC1123Z)))
	}
	return nil
}

// fieldSet counts the message's header fields by "Name: value".
func fieldSet(msg *pipeline.Message) map[string]int {
	set := map[string]int{}
	for f := msg.Header.Fields(); f.Next(); {
		set[f.Key()+": "+f.Value()]++
	}
	return set
}

// added lists the fields of msg not in orig.
func added(msg *pipeline.Message, orig map[string]int) []string {
	var out []string
	for f := msg.Header.Fields(); f.Next(); {
		k := f.Key() + ": " + f.Value()
		if orig[k] > 0 {
			orig[k]--
			continue
		}
		out = append(out, k)
	}
	return out
}

func ptr[T any](v T) *T { return &v }
