package domains

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/dkim"
	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// Errors of Registry.Add.
var (
	ErrExists = errors.New("domain already registered") // by this tenant
	ErrTaken  = errors.New("domain registered by another tenant")
)

// Registry is the node's table of registered sending domains, persisted
// in the spool, with their DKIM keys in memory for dkim_sign (Keys) and
// the DNS checks of their records, cached for Policy.CheckCache. Safe
// for concurrent use; writes are serialised.
type Registry struct {
	sp     *spool.Spool
	res    dnsx.Resolver
	now    func() time.Time
	policy atomic.Pointer[config.Domains]

	mu        sync.Mutex                             // serialises writes
	keys      atomic.Pointer[map[string][]*dkim.Key] // active keys by domain
	view      atomic.Pointer[ZoneView]               // published keys, for the DNS listener
	deleg     atomic.Pointer[config.DNSServer]       // nil: DKIM records are TXT records
	nodeNames atomic.Pointer[[]string]               // SetNodeNames

	cmu   sync.Mutex
	cache map[string]cachedCheck

	kick chan struct{} // a rotation was requested (Kicks)
}

type cachedCheck struct {
	at time.Time
	st []Status
}

// NewRegistry loads the registered domains' keys from sp. res is the
// resolver checks go through (the node's).
func NewRegistry(sp *spool.Spool, res dnsx.Resolver, p config.Domains) (*Registry, error) {
	r := &Registry{sp: sp, res: res, now: time.Now, cache: map[string]cachedCheck{}, kick: make(chan struct{}, 1)}
	r.SetPolicy(p)
	if err := r.reloadKeys(); err != nil {
		return nil, err
	}
	return r, nil
}

// SetPolicy replaces the policy (a configuration reload). Cached checks
// are dropped: the records asked for may have changed.
func (r *Registry) SetPolicy(p config.Domains) {
	r.policy.Store(&p)
	r.cmu.Lock()
	r.cache = map[string]cachedCheck{}
	r.cmu.Unlock()
}

// Policy returns the current policy.
func (r *Registry) Policy() config.Domains { return *r.policy.Load() }

// SetDelegation makes the DKIM records of registered domains CNAMEs to
// the DNS listener's zone (d's selectors), and new domains' first key
// use d's first selector. nil: TXT records (the default). Set it before
// the registry serves; the listener cannot change without a restart.
func (r *Registry) SetDelegation(d *config.DNSServer) { r.deleg.Store(d) }

// Delegation returns what SetDelegation set.
func (r *Registry) Delegation() *config.DNSServer { return r.deleg.Load() }

func (r *Registry) reloadKeys() error {
	all, err := r.sp.ListDomains()
	if err != nil {
		return err
	}
	return r.install(all)
}

// commitDomain stores d (or, with remove, deletes it) with ev, and makes
// the signers and the DNS listener's zone see the change before ev can
// reach an event consumer: a consumer that reads dkim_key_active finds the
// next message signed with the new key. The change is installed in memory
// first; when the write fails, what the spool holds is installed again.
// The caller holds r.mu.
func (r *Registry) commitDomain(d *spool.Domain, remove bool, ev *pipeline.Event) error {
	all, err := r.sp.ListDomains()
	if err != nil {
		return err
	}
	all = slices.DeleteFunc(all, func(o spool.Domain) bool { return o.Domain == d.Domain })
	if !remove {
		all = append(all, *d)
	}
	if err := r.install(all); err != nil {
		return err
	}
	if remove {
		err = r.sp.DeleteDomain(d.Domain, ev)
	} else {
		err = r.sp.PutDomain(d, ev)
	}
	if err != nil {
		if rerr := r.reloadKeys(); rerr != nil {
			return errors.Join(err, rerr)
		}
		return err
	}
	return nil
}

// install makes all the domains the signers and the DNS listener see.
func (r *Registry) install(all []spool.Domain) error {
	m := map[string][]*dkim.Key{}
	v := &ZoneView{byLabel: map[string]map[string]string{}, states: map[string]int{}}
	for _, d := range all {
		ks, err := activeKeys(&d)
		if err != nil {
			return err
		}
		m[d.Domain] = ks
		if err := v.add(&d); err != nil {
			return err
		}
	}
	r.keys.Store(&m)
	v.serial = nextSerial(r.view.Load(), r.now())
	r.view.Store(v)
	return nil
}

// View returns the keys registered domains publish, for the DNS
// listener: replaced whole on every change, safe for concurrent use.
func (r *Registry) View() *ZoneView { return r.view.Load() }

func activeKeys(d *spool.Domain) ([]*dkim.Key, error) {
	var out []*dkim.Key
	for _, k := range d.Keys {
		if k.State != spool.KeyActive {
			continue
		}
		signer, algo, err := dkim.ParsePrivateKey([]byte(k.PrivateKey))
		if err != nil {
			return nil, fmt.Errorf("domain %s key %s: %w", d.Domain, k.Selector, err)
		}
		out = append(out, &dkim.Key{Domain: d.Domain, Selector: k.Selector, Algo: algo, Signer: signer, Tenant: d.Tenant})
	}
	return out, nil
}

// Keys returns the active DKIM keys of a registered domain, nil for any
// other: the dkim_sign stage's lookup for domains without configured keys
// (dkim.Store.SetFallback).
func (r *Registry) Keys(domain string) []*dkim.Key {
	m := r.keys.Load()
	if m == nil {
		return nil
	}
	return (*m)[dkim.NormalizeDomain(domain)]
}

// Add registers domain for tenant with one new DKIM key (the policy's
// selector and algorithm), records a domain_added event, and returns it.
// ErrExists / ErrTaken when it is registered already, a
// *NotRegistrableError when it cannot be (Registrable).
func (r *Registry) Add(tenant, domain string) (*spool.Domain, error) {
	domain = dkim.NormalizeDomain(domain)
	if err := r.Registrable(domain); err != nil {
		return nil, err
	}
	p := r.Policy()
	signer, err := dkim.Generate(p.DKIMAlgo)
	if err != nil {
		return nil, err
	}
	pemData, err := dkim.MarshalPrivateKey(signer)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	have, err := r.sp.GetDomain(domain)
	if err != nil {
		return nil, err
	}
	if have != nil {
		if have.Tenant == tenant {
			return have, ErrExists
		}
		return nil, ErrTaken
	}
	now := r.now().UTC()
	sel := p.DKIMSelector
	if dl := r.deleg.Load(); dl != nil {
		sel = dl.Selectors[0]
	}
	d := &spool.Domain{Domain: domain, Tenant: tenant, Created: now, Keys: []spool.DomainKey{{
		Selector: sel, Algo: p.DKIMAlgo, State: spool.KeyActive, PrivateKey: string(pemData), Created: now, Since: now,
	}}}
	if err := r.commitDomain(d, false, event(pipeline.EventDomainAdded, d)); err != nil {
		return nil, err
	}
	return d, nil
}

func event(typ string, d *spool.Domain) *pipeline.Event {
	return &pipeline.Event{Type: typ, Source: spool.SuppressionAPI, Tenant: d.Tenant, Metadata: map[string]string{"domain": d.Domain}}
}

// Get returns tenant's registered domain, or nil (also when another
// tenant registered it: tenants do not learn of each other's domains).
func (r *Registry) Get(tenant, domain string) (*spool.Domain, error) {
	d, err := r.sp.GetDomain(dkim.NormalizeDomain(domain))
	if err != nil || d == nil || d.Tenant != tenant {
		return nil, err
	}
	return d, nil
}

// List returns tenant's registered domains, in name order.
func (r *Registry) List(tenant string) ([]spool.Domain, error) {
	all, err := r.sp.ListDomains()
	if err != nil {
		return nil, err
	}
	out := all[:0]
	for _, d := range all {
		if d.Tenant == tenant {
			out = append(out, d)
		}
	}
	return out, nil
}

// Remove unregisters tenant's domain (its keys stop signing) with a
// domain_removed event; it returns the removed domain, or nil.
func (r *Registry) Remove(tenant, domain string) (*spool.Domain, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d, err := r.Get(tenant, domain)
	if err != nil || d == nil {
		return nil, err
	}
	if err := r.commitDomain(d, true, event(pipeline.EventDomainRemoved, d)); err != nil {
		return nil, err
	}
	r.cmu.Lock()
	delete(r.cache, d.Domain)
	r.cmu.Unlock()
	return d, nil
}

// Records returns what d must publish under the current policy.
func (r *Registry) Records(d *spool.Domain) ([]Record, error) {
	var keys []DKIMKey
	for _, k := range d.Keys {
		if k.State == spool.KeyRevoked {
			continue
		}
		signer, _, err := dkim.ParsePrivateKey([]byte(k.PrivateKey))
		if err != nil {
			return nil, fmt.Errorf("domain %s key %s: %w", d.Domain, k.Selector, err)
		}
		keys = append(keys, DKIMKey{Selector: k.Selector, Signer: signer})
	}
	dl := r.deleg.Load()
	if dl == nil {
		return Records(d.Domain, r.Policy(), keys)
	}
	return DelegatedRecords(d.Domain, r.Policy(), dl, dl.Selectors, keys)
}

// Check checks d's records in DNS, reusing a check younger than
// Policy.CheckCache unless fresh; a fresh check also asks DNS past the
// resolver's cache (dnsx.Fresh). When the outcome changes d's verified
// state it is persisted (with a domain_verified event when it becomes
// verified) and d is updated.
func (r *Registry) Check(ctx context.Context, d *spool.Domain, fresh bool) ([]Status, error) {
	now := r.now()
	if !fresh {
		r.cmu.Lock()
		c, ok := r.cache[d.Domain]
		r.cmu.Unlock()
		if ok && now.Sub(c.at) < r.Policy().CheckCache {
			return c.st, nil
		}
	}
	recs, err := r.Records(d)
	if err != nil {
		return nil, err
	}
	if fresh {
		// Past the resolver's cache too: the operator just fixed a record.
		ctx = dnsx.Fresh(ctx)
	}
	st := Check(ctx, r.res, recs)
	r.cmu.Lock()
	r.cache[d.Domain] = cachedCheck{at: now, st: st}
	r.cmu.Unlock()
	ok := OK(st)
	var lost []string
	if !ok && !d.Verified.IsZero() {
		lost = failing(d, st)
	}
	if hasUnknown(st) || !(ok && d.Verified.IsZero() || len(lost) > 0) {
		return st, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	cur, err := r.Get(d.Tenant, d.Domain)
	if err != nil || cur == nil {
		return st, err
	}
	var ev *pipeline.Event
	if ok {
		cur.Verified, cur.Unverified, cur.UnverifiedWhy = now.UTC(), time.Time{}, ""
		ev = event(pipeline.EventDomainVerified, cur)
	} else {
		cur.Verified, cur.Unverified, cur.UnverifiedWhy = time.Time{}, now.UTC(), strings.Join(lost, "; ")
		ev = event(pipeline.EventDomainUnverified, cur)
		ev.Metadata["records"] = cur.UnverifiedWhy
	}
	if err := r.sp.PutDomain(cur, ev); err != nil {
		return st, err
	}
	*d = *cur
	return st, nil
}

// failing describes the records of st that d's signing or sending needs
// and that are missing or wrong ("spf example.com: missing"): SPF, the
// return-path records and the DKIM records of the active and pending
// keys. A retired key's record or the DMARC record going missing does
// not cost a verified domain its status (it is shown by GET, not
// enforced).
func failing(d *spool.Domain, st []Status) []string {
	var out []string
	for _, s := range st {
		if s.State != Missing && s.State != Wrong {
			continue
		}
		switch s.Kind {
		case KindSPF, KindReturnPath, KindReturnPathSPF:
		case KindDKIM, KindDKIMCNAME:
			if !slices.ContainsFunc(d.Keys, func(k spool.DomainKey) bool {
				return strings.EqualFold(k.Selector, s.Selector) && (k.State == spool.KeyActive || k.State == spool.KeyPending)
			}) {
				continue
			}
		default:
			continue
		}
		out = append(out, s.Kind+" "+s.Name+": "+s.State)
	}
	return out
}

func hasUnknown(st []Status) bool {
	for _, s := range st {
		if s.State == Unknown {
			return true
		}
	}
	return false
}

// SenderRefusal enforces Policy.RequireVerified for tenant's envelope
// sender domain: a domain the tenant registered must be verified. It
// returns "" when the policy is off, for domains the tenant did not
// register, and for verified ones; otherwise the refusal text naming the
// domain (the caller answers 550 5.7.1 / HTTP 403). A spool read error is
// returned as is (the caller tempfails).
func (r *Registry) SenderRefusal(tenant, domain string) (string, error) {
	if !r.Policy().RequireVerified || domain == "" {
		return "", nil
	}
	d, err := r.Get(tenant, domain)
	if err != nil || d == nil || !d.Verified.IsZero() {
		return "", err
	}
	if !d.Unverified.IsZero() {
		return fmt.Sprintf("sender domain %s was verified but is no longer since %s (%s): fix the DNS records, then run `sluice domain verify %s`",
			d.Domain, d.Unverified.UTC().Format(time.RFC3339), d.UnverifiedWhy, d.Domain), nil
	}
	return fmt.Sprintf("sender domain %s is not verified yet (GET /v1/domains/%s)", d.Domain, d.Domain), nil
}
