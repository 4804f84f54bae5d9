package smtpsrc

import (
	"log/slog"
	"net"
	"strings"
	"testing"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/metrics"
	"github.com/sluice-mta/sluice/internal/relay"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// TestProtocolRefusalsCounted: the refusals go-smtp answers itself (a
// line too long, a recipient past max_recipients, an unknown command)
// are each logged once with their reply and counted in
// sluice_refusals_total{phase="protocol"}; a refusal by the relay (a
// relay-denied recipient) is logged once by the relay, not here.
func TestProtocolRefusalsCounted(t *testing.T) {
	l := testListener()
	l.MaxRecipients = 2
	node, logs := serveCounted(t, &l)
	c := dialReady(t, l.Addr)
	c.ehlo()
	c.cmd("NOOP "+strings.Repeat("x", 2000), 500)
	c.cmd("MAIL FROM:<a@example.com>", 250)
	c.cmd("RCPT TO:<x@local.test>", 250)
	c.cmd("RCPT TO:<y@local.test>", 250)
	c.cmd("RCPT TO:<z@local.test>", 452)
	c.cmd("RCPT TO:<r@elsewhere.test>", 452) // still over the limit: go-smtp again
	c.cmd("FROB", 500)
	c.cmd("QUIT", 221)

	count := func(status string) float64 {
		return promtest.ToFloat64(node.Refused.WithLabelValues(pipeline.SourceSMTP, "test", "protocol", "", status))
	}
	if n4, n5 := count("4xx"), count("5xx"); n4 != 2 || n5 != 2 {
		t.Errorf("protocol refusals counted: 4xx %v, 5xx %v; want 2 and 2", n4, n5)
	}
	out := logs.String()
	if n := strings.Count(out, `msg="command refused"`); n != 4 {
		t.Errorf("%d command refused lines, want 4:\n%s", n, out)
	}
	for _, want := range []string{`code=500 enhanced=5.5.2 text="Line too long"`, `code=452 enhanced=4.5.3 text="Maximum limit of 2 recipients reached"`,
		`text="Syntax errors, FROB command unrecognized"`, "component=smtp listener=test", "remote_ip=127.0.0.1"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

// TestMalformedCommandsCounted: the other refusals go-smtp answers by
// itself — an address that does not parse, a command out of sequence, a
// declared SIZE over the limit, a parameter it does not know — are
// counted and logged once too (they were answered but neither counted
// nor logged).
func TestMalformedCommandsCounted(t *testing.T) {
	l := testListener()
	l.MaxMessageSize = 1000
	node, logs := serveCounted(t, &l)
	c := dialReady(t, l.Addr)
	c.ehlo()
	c.cmd("RCPT TO:<x@local.test>", 503)
	c.cmd("MAIL FROM:<bad", 501)
	c.cmd("MAIL FROM:<a@example.com> SIZE=5000", 552)
	c.cmd("MAIL FROM:<a@example.com> FROB=1", 555)
	c.cmd("MAIL FROM:<a@example.com>", 250)
	c.cmd("RCPT TO:<bad", 501)
	c.cmd("QUIT", 221)

	n5 := promtest.ToFloat64(node.Refused.WithLabelValues(pipeline.SourceSMTP, "test", "protocol", "", "5xx"))
	if n5 != 5 {
		t.Errorf("protocol refusals counted: 5xx %v, want 5", n5)
	}
	out := logs.String()
	if n := strings.Count(out, `msg="command refused"`); n != 5 {
		t.Errorf("%d command refused lines, want 5:\n%s", n, out)
	}
	for _, want := range []string{`code=501 enhanced=5.1.3 text="Bad recipient address syntax"`, `code=552 enhanced=5.3.4 text="Max message size exceeded"`} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

// serveCounted serves the listener l (its Addr set to a free port) with a
// relay, metrics and a text log, until the test ends.
func serveCounted(t *testing.T, l *config.SMTPListener) (*metrics.Node, *testutil.SyncBuffer) {
	t.Helper()
	node, err := metrics.NewNode(metrics.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	logs := &testutil.SyncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	rl := relay.New(relay.NewPipeline(newChain(t, pipeline.ChainOptions{}), nil), fixedSub(),
		relay.Options{Logger: log, Hostname: "relay.test", Metrics: node})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l.Addr = ln.Addr().String()
	srv, err := New(*l, rl, log)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return node, logs
}
