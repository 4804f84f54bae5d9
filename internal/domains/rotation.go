package domains

// DKIM key rotation behind delegated selectors (docs/rotation.md).
//
// Each registered domain has one signing (active) key under one of the
// DNS listener's selectors. A rotation:
//
//  1. generates a key under the next selector, published as pending
//     (dkim_key_pending);
//  2. makes it active once every check resolver returns it at the
//     customer's name (through the CNAME) and the listener's TTL has
//     passed since it was published, so no resolver can still hold an
//     older answer for that name; the old key becomes retired: published,
//     no longer signing (dkim_key_active);
//  3. revokes the retired key after the overlap: its record becomes
//     "v=DKIM1; k=...; p=" (dkim_key_revoked);
//  4. drops the revoked key after remove_after (dkim_key_removed); its
//     name then answers NXDOMAIN until a later rotation reuses the
//     selector.
//
// The state lives in the spool with the domain (spool.DomainKey.State and
// Since), so a restarted node carries on where it stopped. One job per
// node drives it (Registry.Rotate), under the registry's write lock.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/dkim"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// ErrRotating is RequestRotation's answer while a rotation of the domain
// is under way (a pending key exists, or a request is queued).
var ErrRotating = errors.New("a rotation is already under way")

// ErrNotRotating is CancelRotation's answer when no rotation of the
// domain is under way (no pending key, no queued request).
var ErrNotRotating = errors.New("no rotation is under way")

// Reasons in the metadata of a dkim_key_removed event for a pending key
// dropped before it signed (docs/events.md).
const (
	ReasonSelectorUnconfigured = "selector_unconfigured" // its selector left sluice.dns_server.selectors
	ReasonCancelled            = "cancelled"             // CancelRotation
)

// ZoneView is the DKIM key records of the registered domains as the DNS
// listener serves them: by zone label (ZoneLabel) and selector. It is
// immutable.
type ZoneView struct {
	serial  uint32
	byLabel map[string]map[string]string
	states  map[string]int // keys by state
	pending time.Time      // since when the oldest pending key waits; zero: none
}

// KeyStates returns how many keys of registered domains are in state
// (spool.KeyPending, ...): for metrics.
func (v *ZoneView) KeyStates(state string) int {
	if v == nil {
		return 0
	}
	return v.states[state]
}

// OldestPending is when the longest-waiting pending key was published,
// zero when no key is pending.
func (v *ZoneView) OldestPending() time.Time {
	if v == nil {
		return time.Time{}
	}
	return v.pending
}

// Serial is the zone's SOA serial: it grows with every change of the
// registered domains (seconds since 1970, or one more than the last).
func (v *ZoneView) Serial() uint32 {
	if v == nil {
		return 1
	}
	return v.serial
}

// Lookup returns the TXT value published at SELECTOR.LABEL (both lower
// case): found false
// when there is none, labelExists whether LABEL is a registered domain's
// (the name then exists, without records).
func (v *ZoneView) Lookup(label, selector string) (txt string, found, labelExists bool) {
	if v == nil {
		return "", false, false
	}
	sels, ok := v.byLabel[label]
	if !ok {
		return "", false, false
	}
	txt, found = sels[selector]
	return txt, found, true
}

// add publishes d's keys: pending, active and retired with their public
// key, revoked with an empty p=.
func (v *ZoneView) add(d *spool.Domain) error {
	sels := map[string]string{}
	for _, k := range d.Keys {
		v.states[k.State]++
		if since := k.StateSince(); k.State == spool.KeyPending && (v.pending.IsZero() || since.Before(v.pending)) {
			v.pending = since
		}
		sel := strings.ToLower(k.Selector) // DNS names compare case-insensitively
		if k.State == spool.KeyRevoked {
			sels[sel] = RevokedValue(k.Algo)
			continue
		}
		signer, _, err := dkim.ParsePrivateKey([]byte(k.PrivateKey))
		if err != nil {
			return fmt.Errorf("domain %s key %s: %w", d.Domain, k.Selector, err)
		}
		val, err := dkim.RecordValue(signer)
		if err != nil {
			return fmt.Errorf("domain %s key %s: %w", d.Domain, k.Selector, err)
		}
		sels[sel] = val
	}
	v.byLabel[ZoneLabel(d.Domain)] = sels
	return nil
}

func nextSerial(prev *ZoneView, now time.Time) uint32 {
	s := uint32(now.Unix())
	if p := prev.Serial(); s <= p {
		s = p + 1
	}
	return s
}

// Rotation is the rotation schedule (sluice.dkim_rotation) and the DNS
// listener it rotates behind (sluice.dns_server).
type Rotation struct {
	config.DKIMRotation
	DNS *config.DNSServer
	// Published reports nil when every check resolver returns the TXT
	// record whose p= is wantP at name, else why not. Nil: CheckPublished
	// with CheckResolvers.
	Published func(ctx context.Context, name, wantP string) error
	Logger    *slog.Logger
}

// RequestRotation asks for a rotation of tenant's domain now (the
// rotation job starts it at its next pass, Rotate). It returns the domain,
// nil when tenant has no such domain, ErrRotating when a rotation is
// under way.
func (r *Registry) RequestRotation(tenant, domain string) (*spool.Domain, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d, err := r.Get(tenant, domain)
	if err != nil || d == nil {
		return nil, err
	}
	if !d.RotateRequested.IsZero() || slices.ContainsFunc(d.Keys, func(k spool.DomainKey) bool { return k.State == spool.KeyPending }) {
		return d, ErrRotating
	}
	d.RotateRequested = r.now().UTC()
	if err := r.sp.PutDomain(d, nil); err != nil {
		return nil, err
	}
	select {
	case r.kick <- struct{}{}:
	default:
	}
	return d, nil
}

// CancelRotation abandons the rotation of tenant's domain under way: the
// pending key is removed (unpublished, with a dkim_key_removed event whose
// reason is "cancelled") and a queued request is dropped. The active key
// keeps signing. It returns the domain as it is now, nil when tenant has
// no such domain, ErrNotRotating when no rotation is under way.
func (r *Registry) CancelRotation(tenant, domain string) (*spool.Domain, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d, err := r.Get(tenant, domain)
	if err != nil || d == nil {
		return nil, err
	}
	i := slices.IndexFunc(d.Keys, func(k spool.DomainKey) bool { return k.State == spool.KeyPending })
	if i < 0 && d.RotateRequested.IsZero() {
		return d, ErrNotRotating
	}
	d.RotateRequested = time.Time{}
	if i < 0 {
		return d, r.sp.PutDomain(d, nil)
	}
	return d, r.dropPendingLocked(d, i, ReasonCancelled)
}

// dropPendingLocked removes d's pending key d.Keys[i] with a
// dkim_key_removed event carrying reason, persists d and republishes the
// zone. The caller holds r.mu.
func (r *Registry) dropPendingLocked(d *spool.Domain, i int, reason string) error {
	k := d.Keys[i]
	d.Keys = slices.Delete(d.Keys, i, i+1)
	ev := &pipeline.Event{Type: pipeline.EventDKIMKeyRemoved, Source: spool.SuppressionAPI, Tenant: d.Tenant,
		Metadata: map[string]string{"domain": d.Domain, "selector": k.Selector, "reason": reason}}
	if err := r.commitDomain(d, false, ev); err != nil {
		return err
	}
	r.cmu.Lock()
	delete(r.cache, d.Domain) // the records to publish changed
	r.cmu.Unlock()
	return nil
}

// Kicks receives after RequestRotation, so the rotation job can run at
// once rather than at its next tick.
func (r *Registry) Kicks() <-chan struct{} { return r.kick }

// Rotate runs one pass of the rotation over every registered domain at
// time now and returns the first error (the other domains are still
// done). Safe to call concurrently with the registry's other methods;
// one caller at a time.
func (r *Registry) Rotate(ctx context.Context, rot *Rotation) error {
	all, err := r.sp.ListDomains()
	if err != nil {
		return err
	}
	var first error
	for i := range all {
		if err := r.rotateOne(ctx, rot, &all[i]); err != nil {
			if rot.Logger != nil {
				rot.Logger.Warn("dkim rotation", "domain", all[i].Domain, "err", err)
			}
			if first == nil {
				first = err
			}
		}
	}
	return first
}

// rotateOne moves d's keys at most one step each. DNS is asked and keys
// generated outside the lock; every write re-reads the domain under it
// and applies the step only if the key is still in the state seen.
func (r *Registry) rotateOne(ctx context.Context, rot *Rotation, d *spool.Domain) error {
	now := r.now().UTC()
	for _, k := range d.Keys {
		switch {
		case k.State == spool.KeyPending && !slices.ContainsFunc(rot.DNS.Selectors, func(s string) bool { return strings.EqualFold(s, k.Selector) }):
			// The operator changed sluice.dns_server.selectors: the
			// listener no longer serves this key and the customer's
			// CNAMEs do not name it, so it could never become active.
			if err := r.abandon(d, k.Selector, rot.Logger); err != nil {
				return err
			}
			return nil // a later pass may start a rotation under the new selectors
		case k.State == spool.KeyRevoked && !now.Before(k.StateSince().Add(rot.RemoveAfter)):
			if err := r.transition(d, k.Selector, k.State, now, nil); err != nil {
				return err
			}
		case k.State == spool.KeyRetired && !now.Before(k.StateSince().Add(rot.Overlap)):
			if err := r.transition(d, k.Selector, k.State, now, nil); err != nil {
				return err
			}
		case k.State == spool.KeyPending && !now.Before(k.StateSince().Add(rot.DNS.TTL)):
			signer, _, err := dkim.ParsePrivateKey([]byte(k.PrivateKey))
			if err != nil {
				return err
			}
			val, err := dkim.RecordValue(signer)
			if err != nil {
				return err
			}
			check := rot.Published
			if check == nil {
				check = func(ctx context.Context, name, wantP string) error {
					return CheckPublished(ctx, rot.CheckResolvers, name, wantP)
				}
			}
			if err := check(ctx, dkim.RecordName(d.Domain, k.Selector), tag(val, "p")); err != nil {
				if rot.Logger != nil {
					rot.Logger.Info("dkim rotation: pending key not visible everywhere yet", "domain", d.Domain, "selector", k.Selector, "why", err.Error())
				}
				continue
			}
			if err := r.transition(d, k.Selector, k.State, now, nil); err != nil {
				return err
			}
		}
	}
	return r.maybeStart(rot, d, now)
}

// abandon removes seen's pending key under sel (still pending: re-read
// under the lock) because its selector is no longer configured.
func (r *Registry) abandon(seen *spool.Domain, sel string, log *slog.Logger) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	d, err := r.current(seen)
	if err != nil || d == nil {
		return err
	}
	domain := d.Domain
	i := slices.IndexFunc(d.Keys, func(k spool.DomainKey) bool { return k.Selector == sel && k.State == spool.KeyPending })
	if i < 0 {
		return nil
	}
	if log != nil {
		log.Warn("dkim rotation: pending key abandoned, its selector is no longer in sluice.dns_server.selectors", "domain", domain, "selector", sel)
	}
	return r.dropPendingLocked(d, i, ReasonSelectorUnconfigured)
}

// maybeStart begins a rotation of d when one is due (requested, or the
// active key has signed for Every) and none is under way.
func (r *Registry) maybeStart(rot *Rotation, d *spool.Domain, now time.Time) error {
	var active *spool.DomainKey
	for i := range d.Keys {
		switch d.Keys[i].State {
		case spool.KeyPending:
			return nil
		case spool.KeyActive:
			active = &d.Keys[i]
		}
	}
	due := !d.RotateRequested.IsZero() ||
		active != nil && rot.Every > 0 && !now.Before(active.StateSince().Add(rot.Every))
	if !due {
		return nil
	}
	sel := nextSelector(rot.DNS.Selectors, active, d.Keys)
	if sel == "" {
		if rot.Logger != nil {
			rot.Logger.Info("dkim rotation due but every selector is still in use (retired keys in their overlap)", "domain", d.Domain)
		}
		return nil
	}
	algo := r.Policy().DKIMAlgo
	if active != nil {
		algo = active.Algo
	}
	signer, err := dkim.Generate(algo)
	if err != nil {
		return err
	}
	pemData, err := dkim.MarshalPrivateKey(signer)
	if err != nil {
		return err
	}
	nk := &spool.DomainKey{Selector: sel, Algo: algo, State: spool.KeyPending, PrivateKey: string(pemData), Created: now, Since: now}
	return r.transition(d, sel, "", now, nk)
}

// nextSelector is the selector after the active key's in sels (the first
// when it has none or uses another), skipping selectors held by a key
// that is not revoked; "" when all are held.
func nextSelector(sels []string, active *spool.DomainKey, keys []spool.DomainKey) string {
	start := 0
	if active != nil {
		start = slices.Index(sels, active.Selector) + 1
	}
	for i := range sels {
		s := sels[(start+i)%len(sels)]
		if !slices.ContainsFunc(keys, func(k spool.DomainKey) bool { return k.Selector == s && k.State != spool.KeyRevoked }) {
			return s
		}
	}
	return ""
}

// transition applies one step to domain under the write lock: the key
// under sel, seen in state from, moves on (revoked → removed, retired →
// revoked, pending → active with the active key retired); with from ""
// nk is added as pending (replacing a revoked key under its selector).
// seen is the domain as the pass read it. A domain removed or changed
// meanwhile is left alone, and so is one removed and registered again
// (another Created): it does not inherit the old registration's queued
// rotation or key steps.
func (r *Registry) transition(seen *spool.Domain, sel, from string, now time.Time, nk *spool.DomainKey) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	d, err := r.current(seen)
	if err != nil || d == nil {
		return err
	}
	i := slices.IndexFunc(d.Keys, func(k spool.DomainKey) bool { return k.Selector == sel })
	meta := map[string]string{"domain": d.Domain, "selector": sel}
	var typ string
	switch {
	case from == "" && nk != nil:
		if slices.ContainsFunc(d.Keys, func(k spool.DomainKey) bool { return k.State == spool.KeyPending }) ||
			i >= 0 && d.Keys[i].State != spool.KeyRevoked {
			return nil
		}
		if i >= 0 {
			d.Keys = slices.Delete(d.Keys, i, i+1)
		}
		d.Keys = append(d.Keys, *nk)
		d.RotateRequested = time.Time{}
		typ, meta["algo"] = pipeline.EventDKIMKeyPending, nk.Algo
	case i < 0 || d.Keys[i].State != from:
		return nil
	case from == spool.KeyRevoked:
		d.Keys = slices.Delete(d.Keys, i, i+1)
		typ = pipeline.EventDKIMKeyRemoved
	case from == spool.KeyRetired:
		d.Keys[i].State, d.Keys[i].Since = spool.KeyRevoked, now
		typ = pipeline.EventDKIMKeyRevoked
	case from == spool.KeyPending:
		for j := range d.Keys {
			if d.Keys[j].State == spool.KeyActive {
				d.Keys[j].State, d.Keys[j].Since = spool.KeyRetired, now
				meta["previous_selector"] = d.Keys[j].Selector
			}
		}
		d.Keys[i].State, d.Keys[i].Since = spool.KeyActive, now
		typ, meta["algo"] = pipeline.EventDKIMKeyActive, d.Keys[i].Algo
	default:
		return nil
	}
	ev := &pipeline.Event{Type: typ, Source: spool.SuppressionAPI, Tenant: d.Tenant, Metadata: meta}
	return r.commitDomain(d, false, ev)
}

// current re-reads seen under r.mu: nil when it was removed, or removed
// and registered again since (by name and Created time).
func (r *Registry) current(seen *spool.Domain) (*spool.Domain, error) {
	d, err := r.sp.GetDomain(seen.Domain)
	if err != nil || d == nil || !d.Created.Equal(seen.Created) {
		return nil, err
	}
	return d, nil
}

// CheckPublished asks every DNS server of resolvers (host:port, with
// recursion desired) for the TXT records at name, following a CNAME
// chain in the answer, and reports nil when each returns one whose p= is
// wantP; otherwise an error naming the first server that does not (or
// could not be asked). UDP with EDNS0, TCP when truncated; 5 s a query.
func CheckPublished(ctx context.Context, resolvers []string, name, wantP string) error {
	if len(resolvers) == 0 {
		return errors.New("no check resolvers")
	}
	for _, srv := range resolvers {
		txts, err := queryTXT(ctx, srv, name)
		if err != nil {
			return fmt.Errorf("%s: %w", srv, err)
		}
		if !slices.ContainsFunc(txts, func(t string) bool { return tag(t, "p") == wantP }) {
			return fmt.Errorf("%s does not return the key at %s yet (%d TXT record(s))", srv, name, len(txts))
		}
	}
	return nil
}

// queryTXT returns the TXT records at name from server, through CNAMEs.
func queryTXT(ctx context.Context, server, name string) ([]string, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeTXT)
	m.RecursionDesired = true
	m.SetEdns0(4096, false)
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second, UDPSize: 4096}
	resp, _, err := c.ExchangeContext(ctx, m, server)
	if err == nil && resp.Truncated {
		c.Net = "tcp"
		resp, _, err = c.ExchangeContext(ctx, m, server)
	}
	if err != nil {
		return nil, err
	}
	if resp.Rcode != dns.RcodeSuccess {
		return nil, fmt.Errorf("%s for %s TXT", dns.RcodeToString[resp.Rcode], name)
	}
	chain := map[string]bool{strings.ToLower(dns.Fqdn(name)): true}
	for range 8 {
		for _, rr := range resp.Answer {
			if cn, ok := rr.(*dns.CNAME); ok && chain[strings.ToLower(cn.Hdr.Name)] {
				chain[strings.ToLower(cn.Target)] = true
			}
		}
	}
	var out []string
	for _, rr := range resp.Answer {
		if t, ok := rr.(*dns.TXT); ok && chain[strings.ToLower(t.Hdr.Name)] {
			out = append(out, strings.Join(t.Txt, ""))
		}
	}
	return out, nil
}
