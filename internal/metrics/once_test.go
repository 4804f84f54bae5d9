package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestRegisterOnce(t *testing.T) {
	reg := prometheus.NewRegistry()
	a, err := AuthResults(reg)
	if err != nil {
		t.Fatal(err)
	}
	b, err := AuthResults(reg) // a reload builds the stage again
	if err != nil {
		t.Fatal(err)
	}
	b.WithLabelValues("spf", "pass").Inc()
	if n := testutil.ToFloat64(a.WithLabelValues("spf", "pass")); n != 1 {
		t.Errorf("second registration counts apart: %v", n)
	}
	// The same name with other labels is an error, not a silent second series.
	if _, err := RegisterOnce(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sluice_auth_results_total", Help: "x"}, []string{"other"})); err == nil {
		t.Error("conflicting registration accepted")
	}
	if c, err := AuthResults(nil); err != nil || c == nil {
		t.Errorf("nil registry: %v", err)
	}
}
