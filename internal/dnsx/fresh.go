package dnsx

import "context"

// freshKey marks a context whose lookups skip the cache.
type freshKey struct{}

// Fresh returns a context under which Client lookups do not answer from
// the cache: each asks the server, and its answer replaces the cached one
// (so later lookups see it too). It is for an operator's explicit check
// after fixing a record (sluice domain verify, GET /v1/domains/{d}
// ?fresh=true): without it a wrong record stays "wrong" for its TTL (an
// hour is common) and a missing one for the negative TTL, however often
// the check is repeated. Resolvers other than Client ignore it.
func Fresh(ctx context.Context) context.Context {
	return context.WithValue(ctx, freshKey{}, true)
}

// isFresh reports whether ctx came from Fresh.
func isFresh(ctx context.Context) bool {
	v, _ := ctx.Value(freshKey{}).(bool)
	return v
}
