package server

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/revoke"
	"github.com/sluice-mta/sluice/internal/token"
)

// startRevocations builds the token revocation list of a node with
// sluice.tokens: loaded from the spool, then synchronised through
// sluice.redis when configured (internal/revoke). Called by the tokens
// component, after the spool opened and before the listeners.
func (s *Server) startRevocations(cfg *config.Config) error {
	var reg prometheus.Registerer
	if s.metrics != nil {
		reg = s.metrics
	}
	l, err := revoke.New(revoke.Options{Spool: s.sp, Redis: s.redis, MaxLifetime: cfg.Tokens.MaxLifetime,
		Logger: s.log, Metrics: reg})
	if err != nil {
		return err
	}
	n, err := l.Load()
	if err != nil {
		return fmt.Errorf("token revocations: %w", err)
	}
	l.Start()
	s.revoked = l
	s.log.Info("token revocations loaded", "from_spool", n, "shared_through_redis", s.redis != nil)
	return nil
}

// revoker is the revocation list as a token.Revoker (an untyped nil
// without one, so that the verifier skips the check).
func (s *Server) revoker() token.Revoker {
	if s.revoked == nil {
		return nil
	}
	return s.revoked
}
