package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/sluice-mta/sluice/internal/testutil"
)

// scrape reads the admin listener's /metrics with the Prometheus text
// parser.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	res, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("/metrics: %s", res.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(res.Body)
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	return fams
}

// sample returns the value of the series of name whose labels are
// exactly labels ("k=v" pairs), -1 when there is none. Counters and
// gauges give their value, histograms their count.
func sample(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
	want := strings.Join(labels, ",")
	for _, m := range f.Metric {
		var got []string
		for _, lp := range m.Label {
			got = append(got, lp.GetName()+"="+lp.GetValue())
		}
		if strings.Join(got, ",") != want {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	return -1
}

// TestMetricsScriptedSession runs a scripted SMTP session against a real
// node (a Lua stage refusing one recipient, a next hop refusing another)
// and checks the exact counter values /metrics then shows.
func TestMetricsScriptedSession(t *testing.T) {
	sink := testutil.StartSink(t, testutil.SinkOptions{})
	sink.OnRcpt = func(to string) error {
		if strings.HasPrefix(to, "bounce@") {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		}
		return nil
	}
	dir := t.TempDir()
	smtpAddr, admin := testutil.FreeAddr(t), testutil.FreeAddr(t)
	cfg := load(t, fmt.Sprintf(`local sluice = require("sluice")
sluice.spool { path = "%s/spool" }
sluice.events { file = "%s/events.jsonl" }
sluice.listen_smtp { name = "mx", addr = "%s", relay_networks = { "127.0.0.0/8" } }
sluice.listen_admin { addr = "%s", allow = { "127.0.0.1" } }
sluice.stage("policy", {
  on_rcpt = function(txn, rcpt)
    if rcpt.local_part == "refuse" then return sluice.reject(550, "5.7.1", "Recipient refused by policy") end
  end,
  on_route = function(msg, rcpt) return sluice.route.relay { host = "127.0.0.1", port = %d, tls = "none" } end,
})
`, dir, dir, smtpAddr, admin, sink.Port))
	logs := &testutil.SyncBuffer{}
	s, err := New(cfg, slog.New(slog.NewJSONHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer s.Stop(context.Background())

	c, err := smtp.Dial(smtpAddr)
	if err != nil {
		t.Fatal(err)
	}
	send := func(from string, rcpts ...string) {
		t.Helper()
		if err := c.Mail(from, nil); err != nil {
			t.Fatal(err)
		}
		ok := 0
		for _, r := range rcpts {
			if err := c.Rcpt(r, nil); err == nil {
				ok++
			} else if !strings.HasPrefix(r, "refuse@") {
				t.Fatalf("RCPT %s: %v", r, err)
			}
		}
		if ok == 0 {
			if err := c.Reset(); err != nil {
				t.Fatal(err)
			}
			return
		}
		w, err := c.Data()
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, "From: a@example.org\r\nSubject: m\r\n\r\nbody\r\n")
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	send("a@example.org", "ok1@example.com")
	send("a@example.org", "refuse@example.com", "ok2@example.com")
	send("", "bounce@example.com") // null sender: no DSN
	send("a@example.org", "refuse@example.com")
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}

	var fams map[string]*dto.MetricFamily
	testutil.WaitFor(t, "outcomes and the session end in /metrics", func() bool {
		fams = scrape(t, admin)
		return sample(fams, "sluice_delivery_recipients_total", "class=", "outcome=delivered") == 2 &&
			sample(fams, "sluice_delivery_recipients_total", "class=InvalidRecipient", "outcome=bounced") >= 1 &&
			sample(fams, "sluice_smtp_sessions", "listener=mx") == 0
	})
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"sluice_smtp_connections_total", []string{"listener=mx"}, 1},
		{"sluice_smtp_sessions", []string{"listener=mx"}, 0},
		{"sluice_messages_accepted_total", []string{"listener=mx", "source=smtp"}, 3},
		{"sluice_refusals_total", []string{"listener=mx", "phase=rcpt", "source=smtp", "stage=policy", "status=5xx"}, 2},
		{"sluice_delivery_recipients_total", []string{"class=", "outcome=delivered"}, 2},
		{"sluice_delivery_recipients_total", []string{"class=InvalidRecipient", "outcome=bounced"}, 1},
		{"sluice_delivery_attempts_total", []string{"result=ok"}, 3},
		{"sluice_delivery_tls_total", []string{"policy=none", "validated=false"}, 3},
		{"sluice_delivery_attempt_duration_seconds", nil, 3},
		{"sluice_spool_commit_duration_seconds", nil, 3},
		// on_rcpt ran for 5 recipients, on_route for the 3 accepted.
		{"sluice_stage_duration_seconds", []string{"hook=on_rcpt", "stage=policy"}, 5},
		{"sluice_stage_duration_seconds", []string{"hook=on_route", "stage=policy"}, 3},
		{"sluice_stage_errors_total", []string{"hook=on_rcpt", "stage=policy"}, 0},
		{"sluice_queue_oldest_ready_seconds", nil, 0},
		{"sluice_queue_oldest_waiting_seconds", nil, 0},
	} {
		if got := sample(fams, c.name, c.labels...); got != c.want {
			t.Errorf("%s{%s} = %v, want %v", c.name, strings.Join(c.labels, ","), got, c.want)
		}
	}
	if n := len(sink.Messages()); n != 2 {
		t.Errorf("the next hop got %d messages, want 2", n)
	}
	// One log line per recipient outcome, with the recipient's domain.
	got := map[string]int{}
	for _, line := range strings.Split(logs.String(), "\n") {
		var l struct {
			Msg        string  `json:"msg"`
			MsgID      string  `json:"msgid"`
			Queue      string  `json:"queue"`
			RcptDomain string  `json:"rcpt_domain"`
			Result     string  `json:"result"`
			Rcpt       string  `json:"rcpt"`
			Attempt    int     `json:"attempt"`
			Delay      float64 `json:"delay_seconds"`
		}
		if line == "" || json.Unmarshal([]byte(line), &l) != nil || l.Msg != "delivery outcome" {
			continue
		}
		if l.MsgID == "" || l.Queue == "" || l.RcptDomain != "example.com" || l.Attempt != 1 || l.Delay <= 0 {
			t.Errorf("outcome line lacks fields: %s", line)
		}
		if l.Result == "delivered" && l.Rcpt != "" {
			t.Errorf("a delivered outcome logs the address at info: %s", line)
		}
		got[l.Result]++
	}
	if got["delivered"] != 2 || got["bounced"] != 1 || len(got) != 2 {
		t.Errorf("outcome lines %v, want 2 delivered, 1 bounced", got)
	}
	// Every sluice_ metric the node exports is documented.
	doc, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	for name := range fams {
		if strings.HasPrefix(name, "sluice_") && !strings.Contains(string(doc), "`"+name+"`") {
			t.Errorf("docs/metrics.md does not document %s", name)
		}
	}
}

// TestGrafanaDashboardNames: the example dashboard is valid JSON and
// every sluice_ metric its queries use is one docs/metrics.md documents
// (so a renamed metric breaks this test, not the operator's dashboard).
func TestGrafanaDashboardNames(t *testing.T) {
	raw, err := os.ReadFile("../../examples/grafana/sluice.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Targets []struct{ Expr string } `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("examples/grafana/sluice.json: %v", err)
	}
	doc, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`sluice_[a-z_]+`)
	n := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, name := range re.FindAllString(tg.Expr, -1) {
				n++
				name = strings.TrimSuffix(name, "_bucket")
				if !strings.Contains(string(doc), "`"+name+"`") {
					t.Errorf("the dashboard uses %s, which docs/metrics.md does not document", name)
				}
			}
		}
	}
	if n < 20 {
		t.Errorf("the dashboard's queries name only %d metrics", n)
	}
}
