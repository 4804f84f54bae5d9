package metrics

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// RegisterOnce registers c with reg and returns it, or, when an identical
// collector is already registered (a stage rebuilt by a reload, a second
// stage of the same kind), the one registered first, so every user counts
// into the same series. A nil reg registers nothing and returns c. Other
// registration errors (the same name with other labels) are returned.
func RegisterOnce[T prometheus.Collector](reg prometheus.Registerer, c T) (T, error) {
	if reg == nil {
		return c, nil
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(T); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}

// AuthResults is sluice_auth_results_total{method, result}: the
// authentication results the inbound stages recorded (method spf, dkim,
// dmarc; result pass, fail, none, ...: RFC 8601 keywords, a bounded set).
// Registered once per registry (RegisterOnce).
func AuthResults(reg prometheus.Registerer) (*prometheus.CounterVec, error) {
	return RegisterOnce(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_auth_results_total",
		Help: "Authentication results recorded by the spf, dkim_verify and dmarc stages, by method and result.",
	}, []string{"method", "result"}))
}
