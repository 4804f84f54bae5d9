// Package metrics builds a node's Prometheus registry and serves it, with
// liveness and readiness, on the admin listener
// (sluice.listen_admin, docs/config.md).
//
// Components do not use a global registry: the server builds one Registry
// per node and hands its Registerer to each component, so tests can build
// several nodes in one process. Metric names follow Prometheus conventions:
// the sluice_ prefix, _total for counters, _seconds and _bytes units, and
// no label whose values are unbounded (no recipient, message id or raw
// domain).
//
// What it is not: an exporter of per-message data (that is the event
// stream, docs/events.md).
package metrics

import (
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry returns a registry holding the Go runtime and process
// collectors. Safe for concurrent use, like every prometheus.Registry.
// Besides the default go_* metrics it exports the runtime's scheduler
// latency histogram (go_sched_latencies_seconds: how long goroutines
// waited for a CPU once runnable, the first thing to look at when
// acceptance latency grows under load) and its GC metrics (go_gc_*: pauses,
// cycles, heap goal).
func NewRegistry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(collectors.MetricsScheduler, collectors.MetricsGC)),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// Check is one readiness condition: nil when ready, else an error saying
// why not (it is shown to the caller of /readyz).
type Check func() error

// Handler serves, to clients whose address is in allow (others get 403):
//
//	GET /metrics  the registry in the Prometheus text format
//	GET /healthz  200 "ok" while the process serves HTTP (liveness)
//	GET /readyz   200 "ready", or 503 with one line per failing check,
//	              "name: reason", in the order of the names
//
// ready may be nil. The handler is safe for concurrent use.
func Handler(reg *prometheus.Registry, allow []netip.Prefix, ready map[string]Check) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		text(w, http.StatusOK, "ok\n")
	})
	names := slices.Sorted(maps.Keys(ready)) // failing checks in a stable order
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		var b strings.Builder
		for _, name := range names {
			if err := ready[name](); err != nil {
				fmt.Fprintf(&b, "%s: %v\n", name, err)
			}
		}
		if b.Len() > 0 {
			text(w, http.StatusServiceUnavailable, b.String())
			return
		}
		text(w, http.StatusOK, "ready\n")
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !allowed(r.RemoteAddr, allow) {
			text(w, http.StatusForbidden, "forbidden: this address is not in sluice.listen_admin's allow list\n")
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func allowed(remote string, allow []netip.Prefix) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return false
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	a = a.Unmap()
	for _, p := range allow {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func text(w http.ResponseWriter, status int, s string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(s))
}
