package events

import (
	"encoding/json"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// AgeCollector reports, at scrape time, each consumer's lag as an age:
// sluice_event_consumer_lag_seconds{consumer}, the seconds since the
// oldest event the consumer has not taken yet was recorded (0 when it has
// taken every event). With the Kafka sink down it says how stale the
// topics are. Each scrape reads one event per consumer from the outbox.
func (e *Exporter) AgeCollector() prometheus.Collector {
	return ageCollector{e, prometheus.NewDesc("sluice_event_consumer_lag_seconds",
		"Seconds since the oldest event a consumer has not taken yet was recorded (0: none waiting).", []string{"consumer"}, nil)}
}

type ageCollector struct {
	e    *Exporter
	desc *prometheus.Desc
}

func (a ageCollector) Describe(ch chan<- *prometheus.Desc) { ch <- a.desc }

func (a ageCollector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	for _, c := range a.e.cons {
		age := 0.0
		if evs, err := a.e.sp.ReadOutbox(c.next.Load(), 1); err == nil && len(evs) == 1 {
			var ev struct {
				Time time.Time `json:"time"`
			}
			if json.Unmarshal(evs[0].JSON, &ev) == nil && !ev.Time.IsZero() {
				age = max(now.Sub(ev.Time).Seconds(), 0)
			}
		}
		ch <- prometheus.MustNewConstMetric(a.desc, prometheus.GaugeValue, age, c.name)
	}
}
