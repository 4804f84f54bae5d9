// Package tracking is Sluice's engagement tracking (docs/tracking.md):
// the open pixel and signed click links it writes into a message's HTML
// (and optionally text) parts before DKIM signing, the RFC 8058
// one-click unsubscribe fields, and the HTTP endpoints that serve the
// pixel, redirect clicks, take unsubscribes and record opened, clicked
// and unsubscribed events.
//
// Tracking URLs carry everything the endpoints need (tenant, message id,
// recipient, acceptance time, the link) under an HMAC-SHA256 tag from a
// rotating keyring, so a link works after the message's data is purged
// and a forged or altered URL gets 404, never a redirect: there is no
// open redirect and no lookup.
//
// What it is not: a link shortener, an analytics store (events go to the
// event sinks and nowhere else) or a way to track plain-text-only mail
// opens.
package tracking

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sluice-mta/sluice/internal/logx"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// Policy is one tenant's tracking: where its tracking host is and what
// is tracked when a message does not say.
type Policy struct {
	// BaseURL is the scheme and host (and port) of the tenant's tracking
	// host, a name the tenant points (CNAME) at Sluice's HTTP listener:
	// "https://t.acme.example". "" disables tracking for the tenant.
	BaseURL string
	// Opens, Clicks and Unsubscribe are the defaults a message's own
	// request (track_opens, track_clicks, list_unsubscribe; msg:track)
	// overrides either way.
	Opens, Clicks, Unsubscribe bool
}

// Options configure a Tracker (sluice.tracking, docs/config.md).
type Options struct {
	Keys *Keyring
	// Default applies to tenants not in Tenants (and the tenant "").
	Default Policy
	Tenants map[string]Policy
	// TextLinks also rewrites the http(s) URLs of text/plain parts.
	TextLinks bool
	// MachineWindow: an open or click this soon after the message was
	// accepted is flagged machine ("too_soon"). Default 10s; negative: off.
	MachineWindow time.Duration
	// EveryEvent records every open and click; false (the default)
	// records the first human and the first machine one per recipient
	// (and link, for clicks) seen by this node.
	EveryEvent bool
	// DedupeEntries bounds the memory of that dedupe (about 100 bytes an
	// entry). Default 200,000.
	DedupeEntries int
}

// Tracker rewrites messages (pipeline.BodyRewriter) and serves the
// tracking endpoints (ServeHTTP). Configure swaps its options at run
// time (a reload). Safe for concurrent use.
type Tracker struct {
	opts   atomic.Pointer[compiled]
	sp     atomic.Pointer[spool.Spool]
	log    *slog.Logger
	now    func() time.Time
	seen   atomic.Pointer[dedupe]
	sample *logx.Sampler
}

// compiled are Options with the hosts indexed.
type compiled struct {
	Options
	hosts map[string]string // lower-case host[:port] of a BaseURL -> tenant ("" for the default)
}

var _ pipeline.BodyRewriter = (*Tracker)(nil)

// New builds a Tracker that writes events and suppressions to sp. sp
// may be nil and given later with UseSpool (before ServeHTTP is used);
// Rewrite does not need it.
func New(o Options, sp *spool.Spool, log *slog.Logger) (*Tracker, error) {
	if log == nil {
		log = slog.Default()
	}
	t := &Tracker{log: log.With("component", "tracking"), now: time.Now, sample: logx.NewSampler(time.Minute)}
	if err := t.Configure(o); err != nil {
		return nil, err
	}
	t.UseSpool(sp)
	return t, nil
}

// UseSpool sets the spool that receives events and suppressions.
func (t *Tracker) UseSpool(sp *spool.Spool) {
	if sp != nil {
		t.sp.Store(sp)
	}
}

// Configure validates o and makes it the options in force (a reload:
// links signed by keys still in the ring keep working).
func (t *Tracker) Configure(o Options) error {
	c, err := compile(o)
	if err != nil {
		return err
	}
	if d := t.seen.Load(); d == nil || d.max != c.DedupeEntries {
		t.seen.Store(newDedupe(c.DedupeEntries))
	}
	t.opts.Store(c)
	return nil
}

// Check reports what Configure would refuse in o.
func Check(o Options) error {
	_, err := compile(o)
	return err
}

func compile(o Options) (*compiled, error) {
	if o.Keys == nil {
		return nil, errors.New("tracking: a keyring is required")
	}
	if o.MachineWindow == 0 {
		o.MachineWindow = 10 * time.Second
	}
	if o.DedupeEntries <= 0 {
		o.DedupeEntries = 200_000
	}
	c := &compiled{Options: o, hosts: map[string]string{}}
	check := func(tenant string, p *Policy) error {
		if p.BaseURL == "" {
			return nil
		}
		u, err := url.Parse(p.BaseURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return fmt.Errorf("tracking: base_url %q: want https://HOST (a scheme and a host name, no path)", p.BaseURL)
		}
		// A default port is dropped: browsers leave it out of the Host
		// header (RFC 9110 section 7.2), so "https://t.acme.example:443"
		// must route requests for "t.acme.example".
		h := strings.ToLower(u.Host)
		if port := u.Port(); port == "443" && u.Scheme == "https" || port == "80" && u.Scheme == "http" {
			h = strings.TrimSuffix(h, ":"+port)
		}
		p.BaseURL = u.Scheme + "://" + h
		if other, dup := c.hosts[h]; dup && other != tenant {
			return fmt.Errorf("tracking: host %s is the tracking host of two tenants (%q and %q)", h, other, tenant)
		}
		c.hosts[h] = tenant
		return nil
	}
	if err := check("", &c.Default); err != nil {
		return nil, err
	}
	c.Tenants = make(map[string]Policy, len(o.Tenants))
	for name, p := range o.Tenants {
		if err := check(name, &p); err != nil {
			return nil, err
		}
		c.Tenants[name] = p
	}
	return c, nil
}

func (c *compiled) policy(tenant string) Policy {
	if p, ok := c.Tenants[tenant]; ok {
		return p
	}
	return c.Default
}

// Rewrite adds what the message's tracking asks for (Txn.Track over its
// tenant's defaults): the List-Unsubscribe and List-Unsubscribe-Post
// fields, signed click links and the open pixel in its HTML part. Mail
// from the null sender (bounces) is never tracked. A message with
// several recipients gets links without a recipient (their events have
// an empty recipient) and no List-Unsubscribe: one body cannot say who
// unsubscribes. A message that already has a List-Unsubscribe field
// keeps it (ours is not added).
func (t *Tracker) Rewrite(_ context.Context, msg *pipeline.Message) error {
	c := t.opts.Load()
	if msg.Txn == nil || msg.Sender == "" || msg.Conn != nil && msg.Conn.Source == pipeline.SourceDSN {
		return nil
	}
	tenant := ""
	if msg.Conn != nil {
		tenant = msg.Conn.Tenant()
	}
	pol := c.policy(tenant)
	opens, clicks, unsub := msg.Track.Resolve(pol.Opens, pol.Clicks, pol.Unsubscribe)
	if !opens && !clicks && !unsub {
		return nil
	}
	if pol.BaseURL == "" {
		if ok, n := t.sample.Allow("nobase:" + tenant); ok {
			t.log.Warn("tracking asked for a tenant without a tracking host (sluice.tracking base_url); the message is sent untracked",
				"tenant", tenant, "msgid", msg.ID, "similar_suppressed", n)
		}
		return nil
	}
	rcpt := ""
	if len(msg.Recipients) == 1 {
		rcpt = msg.Recipients[0].Address
	}
	base := Link{Tenant: tenant, MessageID: msg.ID, Recipient: rcpt, Accepted: msg.Received}
	mk := func(kind byte, u string) string {
		l := base
		l.Kind, l.URL = kind, u
		return pol.BaseURL + "/t/" + string(kind) + "/" + c.Keys.Sign(&l)
	}
	theirs := msg.Header.Values("List-Unsubscribe")
	if unsub && rcpt != "" && len(theirs) == 0 {
		// RFC 8058 section 3.1: both fields, covered by the DKIM
		// signature that follows (dkim.DefaultHeaders signs them).
		msg.Header.Add("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
		msg.Header.Add("List-Unsubscribe", "<"+mk(KindUnsubscribe, "")+">")
	}
	if !opens && !clicks {
		return nil
	}
	ownPrefix := pol.BaseURL + "/"
	skip := func(u string) bool {
		if strings.HasPrefix(strings.ToLower(u), ownPrefix) {
			return true
		}
		for _, v := range theirs {
			if strings.Contains(v, "<"+u+">") {
				return true
			}
		}
		return false
	}
	var link func(string) string
	if clicks {
		link = func(u string) string { return mk(KindClick, u) }
	}
	pixel := ""
	if opens {
		pixel = `<img src="` + mk(KindOpen, "") + `" width="1" height="1" alt="" style="display:block;width:1px;height:1px;border:0" />`
	}
	w := &walker{html: func(dst, src []byte) ([]byte, bool) {
		out, n := RewriteHTML(dst, src, HTMLOptions{Link: link, Pixel: pixel, Skip: skip})
		changed := n > 0 || pixel != ""
		pixel = "" // one pixel per message: the first HTML part
		return out, changed
	}}
	if clicks && c.TextLinks {
		w.text = func(dst, src []byte) ([]byte, bool) {
			out, n := RewriteText(dst, src, link, skip)
			return out, n > 0
		}
	}
	if body, changed := w.entity(&msg.Header, msg.Body, 0); changed {
		msg.Body = body
	}
	return nil
}
