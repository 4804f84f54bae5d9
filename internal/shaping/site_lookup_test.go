package shaping

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
)

// TestSiteOneLookupPerDomain: 50 callers asking at once for the site of a
// domain whose MX lookup hangs send one query, not 50 (a burst of mail to
// a new domain must not flood the resolver), and all get the same answer.
func TestSiteOneLookupPerDomain(t *testing.T) {
	dns := dnstest.NewServer(t)
	dns.SetTimeout("slow.test")
	res, err := dnsx.New(dnsx.Options{Server: dns.Addr(), Timeout: time.Second, Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	s, _, _ := newShaper(t, "[\"default\"]\nconnection_limit = 1\n", Options{Resolver: res})
	var wg sync.WaitGroup
	sites := make([]string, 50)
	for i := range sites {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sites[i] = s.Site(context.Background(), "slow.test")
		}()
	}
	wg.Wait()
	if q := dns.Queries(); q != 1 {
		t.Errorf("%d DNS queries for one domain asked by 50 callers at once, want 1", q)
	}
	for i, site := range sites {
		if site != "slow.test" {
			t.Errorf("caller %d: site %q, want slow.test (a failed lookup)", i, site)
		}
	}
}
