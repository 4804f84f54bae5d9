package server

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/dkim"
	"github.com/sluice-mta/sluice/internal/dkimdns"
	"github.com/sluice-mta/sluice/internal/domains"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// keyStages is what dkim_sign stages offer: their key table, whose
// fallback the node points at the registered domains' keys.
type keyStages interface{ Keys() *dkim.Store }

// useDomainKeys makes every dkim_sign stage of stages sign for registered
// domains (domains.Registry) with their keys, once the registry exists
// (it is opened with the spool, after the first pipeline is built).
func (s *Server) useDomainKeys(stages []pipeline.Stage) {
	for _, st := range stages {
		if ks, ok := st.(keyStages); ok {
			ks.Keys().SetFallback(s.domainKeys)
		}
	}
	if s.cfg != nil && s.cfg.DNSServer != nil {
		s.static.Store(newStaticZone(stages, s.log))
	}
}

// domainKeys is the dkim.Store fallback: the registered domain's keys,
// nil before the spool is open.
func (s *Server) domainKeys(domain string) []*dkim.Key {
	if reg := s.domains.Load(); reg != nil {
		return reg.Keys(domain)
	}
	return nil
}

// openDomains builds the registry of sending domains from the spool.
func (s *Server) openDomains() error {
	reg, err := domains.NewRegistry(s.sp, s.res, domains.PolicyOf(s.cfg))
	if err != nil {
		return err
	}
	reg.SetDelegation(s.cfg.DNSServer)
	reg.SetNodeNames(s.cfg.Hostname)
	s.domains.Store(reg)
	return nil
}

// staticZone is the keys of the dkim_sign stages' configured tables as
// the DNS listener publishes them (by zone label and selector), so
// domains with keys in the configuration can delegate too. Rebuilt with
// each pipeline.
type staticZone struct {
	serial  uint32
	byLabel map[string]map[string]string
}

func newStaticZone(stages []pipeline.Stage, log *slog.Logger) *staticZone {
	z := &staticZone{serial: uint32(time.Now().Unix()), byLabel: map[string]map[string]string{}}
	for _, st := range stages {
		ks, ok := st.(keyStages)
		if !ok {
			continue
		}
		for _, d := range ks.Keys().Domains() {
			for _, k := range ks.Keys().Keys(d) {
				v, err := dkim.RecordValue(k.Signer)
				if err != nil {
					log.Warn("dns listener: a configured key cannot be published", "domain", d, "selector", k.Selector, "err", err)
					continue
				}
				l := domains.ZoneLabel(d)
				if z.byLabel[l] == nil {
					z.byLabel[l] = map[string]string{}
				}
				z.byLabel[l][strings.ToLower(k.Selector)] = v
			}
		}
	}
	return z
}

// nodeZone is the DNS listener's dkimdns.Zone: the registered domains'
// keys, else the configured ones.
type nodeZone struct{ s *Server }

func (z nodeZone) Lookup(label, selector string) (string, bool, bool) {
	if reg := z.s.domains.Load(); reg != nil {
		if txt, found, exists := reg.View().Lookup(label, selector); exists {
			return txt, found, exists
		}
	}
	if sz := z.s.static.Load(); sz != nil {
		if sels, ok := sz.byLabel[label]; ok {
			txt, found := sels[selector]
			return txt, found, true
		}
	}
	return "", false, false
}

func (z nodeZone) Serial() uint32 {
	var s uint32 = 1
	if reg := z.s.domains.Load(); reg != nil {
		s = reg.View().Serial()
	}
	if sz := z.s.static.Load(); sz != nil && sz.serial > s {
		s = sz.serial
	}
	return s
}

// startDNS starts the DNS listener of cfg.DNSServer and the rotation job
// (rotation.go in internal/domains); stop ends both.
func (s *Server) startDNS(d *config.DNSServer) (stop func(), err error) {
	queries, err := s.dnsMetrics()
	if err != nil {
		return nil, err
	}
	srv := dkimdns.New(dkimdns.Options{Zone: d.Zone, NS: d.NS, Hostmaster: d.Hostmaster, TTL: d.TTL, Logger: s.log,
		OnAnswer: func(rcode int) { queries.WithLabelValues(dns.RcodeToString[rcode]).Inc() }}, nodeZone{s})
	if err := srv.Listen(d.Listen); err != nil {
		return nil, err
	}
	s.log.Info("listening", "proto", "dns", "addr", srv.Addr(), "zone", d.Zone)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.rotateLoop(ctx, d)
	}()
	return func() {
		cancel()
		<-done
		_ = srv.Shutdown()
	}, nil
}

// rotateLoop runs the rotation every check_every, and at once when a
// rotation is requested, with the schedule current at each pass (a
// reload changes it).
func (s *Server) rotateLoop(ctx context.Context, d *config.DNSServer) {
	reg := s.domains.Load()
	for {
		rc := *s.rotation.Load()
		rot := &domains.Rotation{DKIMRotation: rc, DNS: d, Logger: s.log}
		if len(rot.CheckResolvers) == 0 {
			rot.CheckResolvers = []string{s.res.Server()}
		}
		_ = reg.Rotate(ctx, rot) // each failure is logged by Rotate
		t := time.NewTimer(rc.CheckEvery)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-reg.Kicks():
		case <-t.C:
		}
		t.Stop()
	}
}

// dnsMetrics registers the DNS listener's and the rotation's metrics
// (docs/metrics.md) and returns the query counter.
func (s *Server) dnsMetrics() (*prometheus.CounterVec, error) {
	queries := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sluice_dns_queries_total",
		Help: "Queries the DNS listener (sluice.dns_server) answered, by rcode (NOERROR, NXDOMAIN, REFUSED, ...)."}, []string{"rcode"})
	cs := []prometheus.Collector{queries,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sluice_dkim_pending_key_age_seconds",
			Help: "How long the oldest pending DKIM key of a registered domain has waited to become active (check resolvers, TTL); 0 when none waits."},
			func() float64 {
				if reg := s.domains.Load(); reg != nil {
					if p := reg.View().OldestPending(); !p.IsZero() {
						return time.Since(p).Seconds()
					}
				}
				return 0
			})}
	for _, st := range []string{spool.KeyPending, spool.KeyActive, spool.KeyRetired, spool.KeyRevoked} {
		cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sluice_dkim_keys",
			Help: "DKIM keys of registered domains, by rotation state.", ConstLabels: prometheus.Labels{"state": st}},
			func() float64 {
				if reg := s.domains.Load(); reg != nil {
					return float64(reg.View().KeyStates(st))
				}
				return 0
			}))
	}
	for _, c := range cs {
		if err := s.metrics.Register(c); err != nil {
			return nil, fmt.Errorf("dns listener metrics: %w", err)
		}
	}
	return queries, nil
}
