package server

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/dkim"
	"github.com/sluice-mta/sluice/pipeline"
)

// keyStage is a dkim_sign stage as the node sees it: a key table.
type keyStage struct {
	pipeline.Stage
	keys *dkim.Store
}

func (k keyStage) Keys() *dkim.Store { return k.keys }

// TestStaticZone: the DNS listener publishes the configured dkim_sign
// keys too, under the domain's label, selectors compared in lower case.
func TestStaticZone(t *testing.T) {
	signer, err := dkim.Generate(dkim.AlgoEd25519)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := dkim.RecordValue(signer)
	st := keyStage{keys: dkim.NewStore([]*dkim.Key{{Domain: "example.com", Selector: "S2026", Algo: dkim.AlgoEd25519, Signer: signer}})}
	s := &Server{log: slog.Default()}
	s.static.Store(newStaticZone([]pipeline.Stage{st}, s.log))
	z := nodeZone{s}
	if v, found, exists := z.Lookup("example-com", "s2026"); !found || !exists || v != want {
		t.Errorf("configured key: %q %v %v", v, found, exists)
	}
	if _, found, exists := z.Lookup("example-com", "s1"); found || !exists {
		t.Errorf("another selector: found %v exists %v", found, exists)
	}
	if _, _, exists := z.Lookup("other-example", "s2026"); exists {
		t.Error("a domain without keys exists")
	}
	if z.Serial() < 2 || !strings.HasPrefix(want, "v=DKIM1; k=ed25519; p=") {
		t.Errorf("serial %d", z.Serial())
	}
}
