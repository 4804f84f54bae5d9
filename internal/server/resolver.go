package server

import (
	"context"
	"net/netip"
	"path/filepath"
	"slices"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/pipeline"
)

// stageResolver adapts dnsx to pipeline.HostResolver: NXDOMAIN and NODATA
// become pipeline.ErrDNSNotFound, every other error stays (temporary).
type stageResolver struct{ r dnsx.Resolver }

var _ pipeline.HostResolver = stageResolver{}

// outcome maps a dnsx result to the pipeline's outcomes.
func outcome[T any](res dnsx.Result[T], err error) ([]T, time.Duration, error) {
	if dnsx.IsNotFound(err) || dnsx.IsNoData(err) {
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
	slices.SortStableFunc(mxs, func(a, b dnsx.MX) int { return int(a.Pref) - int(b.Pref) })
	hosts := make([]string, 0, len(mxs))
	for _, m := range mxs {
		hosts = append(hosts, m.Host)
	}
	return hosts, ttl, nil
}

// ptrResolver is implemented by dnsx.Client (not part of dnsx.Resolver).
type ptrResolver interface {
	LookupPTR(ctx context.Context, ip netip.Addr) (dnsx.Result[string], error)
}

func (t stageResolver) LookupPTR(ctx context.Context, ip netip.Addr) ([]string, time.Duration, error) {
	p, ok := t.r.(ptrResolver)
	if !ok {
		return nil, 0, pipeline.ErrDNSNotFound
	}
	return outcome(p.LookupPTR(ctx, ip))
}

// configDir is the directory relative paths in stage options start from.
func configDir(cfg *config.Config) string {
	if cfg.File == "" {
		return ""
	}
	return filepath.Dir(cfg.File)
}
