package domains

import (
	"testing"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/dkim"
	"github.com/sluice-mta/sluice/internal/spool"
)

// BenchmarkSenderRefusal: the per-MAIL cost of require_verified (one
// spool read) for a registered domain, and the per-message cost of the
// dkim_sign fallback lookup of a registered domain's keys.
func BenchmarkSenderRefusal(b *testing.B) {
	sp, err := spool.Open(b.TempDir(), spool.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer sp.Close()
	pol := config.DefaultDomains()
	pol.RequireVerified, pol.DKIMAlgo = true, dkim.AlgoEd25519
	reg, err := NewRegistry(sp, nil, pol)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := reg.Add("acme", "brand.test"); err != nil {
		b.Fatal(err)
	}
	b.Run("registered", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if why, err := reg.SenderRefusal("acme", "brand.test"); why == "" || err != nil {
				b.Fatal(why, err)
			}
		}
	})
	b.Run("unregistered", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if why, _ := reg.SenderRefusal("acme", "other.test"); why != "" {
				b.Fatal(why)
			}
		}
	})
	st := dkim.NewStore(nil)
	st.SetFallback(reg.Keys)
	b.Run("keys", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if len(dkim.ForTenant(st.Keys("brand.test"), "acme")) != 1 {
				b.Fatal("no key")
			}
		}
	})
}
