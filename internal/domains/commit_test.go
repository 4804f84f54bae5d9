package domains

import (
	"path/filepath"
	"testing"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/dkim"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// An event consumer that reads domain_added or domain_removed the moment
// it is committed finds the signers already changed: the registry
// installs a change before the event can be exported (a flake of the
// rotation end-to-end test once signed with the old key right after
// dkim_key_active).
func TestSignersChangeBeforeTheEvent(t *testing.T) {
	sp, err := spool.Open(filepath.Join(t.TempDir(), "spool"), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	pol := config.DefaultDomains()
	pol.DKIMAlgo = dkim.AlgoEd25519
	r, err := NewRegistry(sp, nil, pol)
	if err != nil {
		t.Fatal(err)
	}
	type seen struct {
		typ  string
		keys int
	}
	got := make(chan seen)
	stop := make(chan struct{})
	defer close(stop)
	go func() { // the consumer: on each commit, the signers for what it reads
		next := uint64(1)
		for {
			select {
			case <-sp.OutboxNotify():
			case <-stop:
				return
			}
			evs, err := sp.ReadOutbox(next, 100)
			if err != nil {
				t.Error(err)
				return
			}
			for _, ev := range evs {
				next = ev.Seq + 1
				select {
				case got <- seen{ev.Type, len(r.Keys("shop.example"))}:
				case <-stop:
					return
				}
			}
		}
	}()
	for i := range 100 {
		if _, err := r.Add("acme", "shop.example"); err != nil {
			t.Fatal(err)
		}
		if s := <-got; s.typ != pipeline.EventDomainAdded || s.keys != 1 {
			t.Fatalf("round %d: %s read with %d signing keys, want domain_added with 1", i, s.typ, s.keys)
		}
		if _, err := r.Remove("acme", "shop.example"); err != nil {
			t.Fatal(err)
		}
		if s := <-got; s.typ != pipeline.EventDomainRemoved || s.keys != 0 {
			t.Fatalf("round %d: %s read with %d signing keys, want domain_removed with 0", i, s.typ, s.keys)
		}
	}
}
