package dnsx_test

import (
	"context"
	"testing"

	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
)

// TestFreshSkipsCache: a record changed on the server is still the cached
// one for a plain lookup (TTL one hour), the new one under dnsx.Fresh, and
// the fresh answer replaces the cached one for later plain lookups. A
// cached NXDOMAIN is skipped the same way.
func TestFreshSkipsCache(t *testing.T) {
	srv := dnstest.NewServer(t)
	srv.SetTTL(3600)
	srv.SetNegativeTTL(300)
	c, err := dnsx.New(dnsx.Options{Server: srv.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	txt := func(ctx context.Context, name string) string {
		t.Helper()
		r, err := c.LookupTXT(ctx, name)
		if err != nil {
			return err.Error()
		}
		return r.Records[0]
	}

	srv.AddTXT("a.example", "old")
	if got := txt(ctx, "a.example"); got != "old" {
		t.Fatalf("first lookup %q", got)
	}
	srv.Remove("a.example")
	srv.AddTXT("a.example", "new")
	if got := txt(ctx, "a.example"); got != "old" {
		t.Fatalf("plain lookup within the TTL %q; want the cached old", got)
	}
	if got := txt(dnsx.Fresh(ctx), "a.example"); got != "new" {
		t.Errorf("fresh lookup %q; want new", got)
	}
	if got := txt(ctx, "a.example"); got != "new" {
		t.Errorf("plain lookup after the fresh one %q; want new", got)
	}

	if _, err := c.LookupTXT(ctx, "b.example"); !dnsx.IsNotFound(err) {
		t.Fatalf("b.example before it exists: %v", err)
	}
	srv.AddTXT("b.example", "now")
	if _, err := c.LookupTXT(ctx, "b.example"); !dnsx.IsNotFound(err) {
		t.Fatalf("plain lookup within the negative TTL: %v; want the cached NXDOMAIN", err)
	}
	if got := txt(dnsx.Fresh(ctx), "b.example"); got != "now" {
		t.Errorf("fresh lookup of a name that now exists %q", got)
	}
}
