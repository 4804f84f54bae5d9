package dnsx

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

// ForStages adapts r to pipeline.HostResolver, the DNS stages get in
// pipeline.Env: NXDOMAIN and NODATA become pipeline.ErrDNSNotFound, every
// other error stays as it is (temporary). PTR lookups need a *Client (or
// anything with its LookupPTR); with another Resolver they find nothing.
func ForStages(r Resolver) pipeline.HostResolver { return stageResolver{r} }

type stageResolver struct{ r Resolver }

// outcome maps a dnsx result to the pipeline's outcomes.
func outcome[T any](res Result[T], err error) ([]T, time.Duration, error) {
	if IsNotFound(err) || IsNoData(err) {
		return nil, 0, pipeline.ErrDNSNotFound
	}
	if err != nil {
		return nil, 0, err
	}
	return res.Records, res.TTL, nil
}

func (t stageResolver) LookupTXT(ctx context.Context, name string) ([]string, time.Duration, error) {
	return outcome(t.r.LookupTXT(ctx, name))
}

func (t stageResolver) LookupIP(ctx context.Context, host string) ([]netip.Addr, time.Duration, error) {
	return outcome(t.r.LookupHost(ctx, host))
}

func (t stageResolver) LookupMX(ctx context.Context, domain string) ([]string, time.Duration, error) {
	mxs, ttl, err := outcome(t.r.LookupMX(ctx, domain))
	if err != nil {
		return nil, 0, err
	}
	slices.SortStableFunc(mxs, func(a, b MX) int { return int(a.Pref) - int(b.Pref) })
	hosts := make([]string, 0, len(mxs))
	for _, m := range mxs {
		hosts = append(hosts, m.Host)
	}
	return hosts, ttl, nil
}

// ptrResolver is implemented by Client (not part of Resolver).
type ptrResolver interface {
	LookupPTR(ctx context.Context, ip netip.Addr) (Result[string], error)
}

func (t stageResolver) LookupPTR(ctx context.Context, ip netip.Addr) ([]string, time.Duration, error) {
	p, ok := t.r.(ptrResolver)
	if !ok {
		return nil, 0, pipeline.ErrDNSNotFound
	}
	return outcome(p.LookupPTR(ctx, ip))
}

// NetError turns a pipeline resolver error for name into the
// *net.DNSError that libraries written against net.Resolver classify
// (blitiri.com.ar/go/spf, go-msgauth): pipeline.ErrDNSNotFound becomes
// IsNotFound ("no record", a result), anything else IsTemporary.
func NetError(name string, err error) error {
	if errors.Is(err, pipeline.ErrDNSNotFound) {
		return &net.DNSError{Err: "no such record", Name: name, IsNotFound: true}
	}
	return &net.DNSError{Err: "lookup failed", Name: name, IsTemporary: true}
}
