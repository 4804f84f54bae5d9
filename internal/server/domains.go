package server

import (
	"github.com/sluice-mta/sluice/internal/dkim"
	"github.com/sluice-mta/sluice/internal/domains"
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
	s.domains.Store(reg)
	return nil
}
