package dmarc_test

import (
	"context"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/sluice-mta/sluice/internal/metrics"

	"github.com/sluice-mta/sluice/internal/dkim"
	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	_ "github.com/sluice-mta/sluice/internal/stages/dkim" // dkim_verify
	"github.com/sluice-mta/sluice/internal/stages/dmarc"
	_ "github.com/sluice-mta/sluice/internal/stages/spf"
	"github.com/sluice-mta/sluice/pipeline"
)

var update = flag.Bool("update", false, "rewrite testdata/*.result from the current output")

// envelope is what a .dns file's "; envelope" line gives.
type envelope struct {
	ip             netip.Addr
	helo, mailfrom string
}

// loadZone serves a .dns file on a loopback DNS server. Lines:
//
//	; envelope ip=IP helo=NAME mailfrom=ADDR
//	NAME TXT text to the end of the line (split into 255-octet strings)
//	NAME A IP / NAME MX PREF HOST / NAME SERVFAIL
func loadZone(t *testing.T, path string) (*dnstest.Server, envelope) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := dnstest.NewServer(t)
	var env envelope
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "; envelope "); ok {
			for _, kv := range strings.Fields(rest) {
				k, v, _ := strings.Cut(kv, "=")
				switch k {
				case "ip":
					env.ip = netip.MustParseAddr(v)
				case "helo":
					env.helo = v
				case "mailfrom":
					env.mailfrom = v
				}
			}
			continue
		}
		if line == "" || strings.HasPrefix(line, ";") {
			continue
		}
		f := strings.SplitN(line, " ", 3)
		switch {
		case len(f) == 3 && f[1] == "TXT":
			srv.AddTXT(f[0], dkim.SplitTXT(f[2])...)
		case len(f) == 3 && f[1] == "A":
			srv.AddA(f[0], f[2])
		case len(f) == 3 && f[1] == "MX":
			pref, host, _ := strings.Cut(f[2], " ")
			p, err := strconv.ParseUint(pref, 10, 16)
			if err != nil {
				t.Fatalf("%s: bad MX line %q", path, line)
			}
			srv.AddMX(f[0], uint16(p), host)
		case len(f) == 2 && f[1] == "SERVFAIL":
			srv.SetServfail(f[0])
		default:
			t.Fatalf("%s: bad line %q", path, line)
		}
	}
	if !env.ip.IsValid() {
		t.Fatalf("%s: no envelope line", path)
	}
	return srv, env
}

// build makes the inbound chain: spf, dkim_verify, dmarc, provisioned
// with a dnsx client on srv.
func build(t *testing.T, srv *dnstest.Server, dmarcOpts map[string]any) *pipeline.Chain {
	t.Helper()
	return buildWith(t, srv, dmarcOpts, nil)
}

// buildWith is build with a metrics registry.
func buildWith(t *testing.T, srv *dnstest.Server, dmarcOpts map[string]any, reg prometheus.Registerer) *pipeline.Chain {
	t.Helper()
	cl, err := dnsx.New(dnsx.Options{Server: srv.Addr(), Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	env := &pipeline.Env{Resolver: dnsx.ForStages(cl), Hostname: "mx.test", Metrics: reg}
	var stages []pipeline.Stage
	for _, k := range []struct {
		kind string
		opts map[string]any
	}{{"spf", nil}, {"dkim_verify", nil}, {"dmarc", dmarcOpts}} {
		f, ok := pipeline.Lookup(k.kind)
		if !ok {
			t.Fatalf("%s not registered", k.kind)
		}
		st, err := f(k.kind, k.opts)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.(pipeline.Provisioner).Provision(env); err != nil {
			t.Fatal(err)
		}
		stages = append(stages, st)
	}
	ch, err := pipeline.Compile(stages, pipeline.ChainOptions{AuthServID: "mx.test"})
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// TestGolden runs each testdata triple NAME.msg (the message as
// received), NAME.dns (the DNS zone served on loopback and the SMTP
// envelope) through spf, dkim_verify and dmarc, and compares the
// Authentication-Results field written with NAME.result. The signed
// messages were made by dkimpy (testdata/sign.py), not by us.
func TestGolden(t *testing.T) {
	msgs, _ := filepath.Glob("testdata/*.msg")
	if len(msgs) < 10 {
		t.Fatalf("only %d golden messages", len(msgs))
	}
	for _, mf := range msgs {
		name := strings.TrimSuffix(filepath.Base(mf), ".msg")
		t.Run(name, func(t *testing.T) {
			srv, env := loadZone(t, "testdata/"+name+".dns")
			raw, err := os.ReadFile(mf)
			if err != nil {
				t.Fatal(err)
			}
			got := run(t, build(t, srv, nil), env, raw)
			rf := "testdata/" + name + ".result"
			if *update {
				if err := os.WriteFile(rf, []byte(got+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(rf)
			if err != nil {
				t.Fatal(err)
			}
			if got != strings.TrimSpace(string(want)) {
				t.Errorf("Authentication-Results:\n got %s\nwant %s", got, strings.TrimSpace(string(want)))
			}
		})
	}
}

// run passes one message through ch and returns its
// Authentication-Results value.
func run(t *testing.T, ch *pipeline.Chain, env envelope, raw []byte) string {
	t.Helper()
	ctx := context.Background()
	txn := &pipeline.Txn{Conn: &pipeline.Conn{Source: pipeline.SourceSMTP, RemoteIP: env.ip, HELO: env.helo}, ID: "01GOLDEN", Sender: env.mailfrom}
	if err := ch.Mail(ctx, txn); err != nil {
		t.Fatal(err)
	}
	msg, err := pipeline.ParseMessage(txn, []byte(strings.ReplaceAll(strings.ReplaceAll(string(raw), "\r\n", "\n"), "\n", "\r\n")))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ch.Message(ctx, msg); err != nil {
		t.Fatalf("on_message: %v", err)
	}
	return msg.Header.Get("Authentication-Results")
}

// TestEnforce: with enforce = true, p=reject refuses the message with 550
// 5.7.1, p=quarantine tags it, and pct=0 softens reject to quarantine.
func TestEnforce(t *testing.T) {
	raw, err := os.ReadFile("testdata/dmarc-fail-reject.msg")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		record, wantTag string
		wantReject      bool
	}{
		{"v=DMARC1; p=reject", "", true},
		{"v=DMARC1; p=quarantine", dmarc.QuarantineTag, false},
		{"v=DMARC1; p=reject; pct=0", dmarc.QuarantineTag, false},
		{"v=DMARC1; p=none", "", false},
	} {
		srv, env := loadZone(t, "testdata/dmarc-fail-reject.dns")
		srv.Remove("_dmarc.example.com")
		srv.AddTXT("_dmarc.example.com", c.record)
		ch := build(t, srv, map[string]any{"enforce": true})
		ctx := context.Background()
		txn := &pipeline.Txn{Conn: &pipeline.Conn{Source: pipeline.SourceSMTP, RemoteIP: env.ip, HELO: env.helo}, ID: "01ENF", Sender: env.mailfrom}
		if err := ch.Mail(ctx, txn); err != nil {
			t.Fatal(err)
		}
		msg, _ := pipeline.ParseMessage(txn, raw)
		_, _, err := ch.Message(ctx, msg)
		if c.wantReject {
			rep := pipeline.Reply(err)
			if err == nil || rep.Code != 550 || rep.Enhanced != (pipeline.EnhancedCode{5, 7, 1}) {
				t.Errorf("%s: %v, want 550 5.7.1", c.record, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.record, err)
			continue
		}
		has := len(msg.Tags) == 1 && msg.Tags[0] == c.wantTag
		if c.wantTag == "" {
			has = len(msg.Tags) == 0
		}
		if !has {
			t.Errorf("%s: tags %v, want %q", c.record, msg.Tags, c.wantTag)
		}
	}
}

// TestSubmissionsSkipped: mail our own clients submit (authenticated, in
// relay networks, HTTP, DSNs) is neither DKIM-verified nor judged by
// DMARC, unless check_submissions is set: it is not signed yet and
// p=reject would refuse it.
func TestSubmissionsSkipped(t *testing.T) {
	raw, err := os.ReadFile("testdata/dmarc-fail-reject.msg")
	if err != nil {
		t.Fatal(err)
	}
	srv, env := loadZone(t, "testdata/dmarc-fail-reject.dns")
	for _, c := range []struct {
		conn *pipeline.Conn
		opts map[string]any
		want string
	}{
		{&pipeline.Conn{Source: pipeline.SourceSMTP, RemoteIP: env.ip, Identity: &pipeline.Identity{Name: "app"}}, map[string]any{"enforce": true}, ""},
		{&pipeline.Conn{Source: pipeline.SourceSMTP, RemoteIP: env.ip, RelayNetwork: true}, map[string]any{"enforce": true}, ""},
		{&pipeline.Conn{Source: pipeline.SourceDSN}, map[string]any{"enforce": true}, ""},
		{&pipeline.Conn{Source: pipeline.SourceSMTP, RemoteIP: env.ip, Identity: &pipeline.Identity{Name: "app"}}, map[string]any{"check_submissions": true},
			"mx.test; dmarc=fail reason=\"policy reject, disposition reject\" header.from=example.com"},
	} {
		ch := build(t, srv, c.opts)
		txn := &pipeline.Txn{Conn: c.conn, ID: "01SUB", Sender: env.mailfrom}
		if err := ch.Mail(context.Background(), txn); err != nil {
			t.Fatal(err)
		}
		msg, _ := pipeline.ParseMessage(txn, raw)
		if _, _, err := ch.Message(context.Background(), msg); err != nil {
			t.Errorf("%+v: %v", c.conn, err)
			continue
		}
		if got := msg.Header.Get("Authentication-Results"); got != c.want {
			t.Errorf("%+v %v: %q, want %q", c.conn, c.opts, got, c.want)
		}
	}
}

// TestAuthResultsMetric: sluice_auth_results_total counts each stage's
// result; building the stages again on the same registry (a reload)
// keeps counting into the same series.
func TestAuthResultsMetric(t *testing.T) {
	reg := prometheus.NewRegistry()
	raw, err := os.ReadFile("testdata/dmarc-fail-reject.msg")
	if err != nil {
		t.Fatal(err)
	}
	srv, env := loadZone(t, "testdata/dmarc-fail-reject.dns")
	for i := 0; i < 2; i++ {
		run(t, buildWith(t, srv, nil, reg), env, raw)
	}
	for _, c := range []struct{ method, result string }{{"spf", "fail"}, {"dkim", "none"}, {"dmarc", "fail"}} {
		c2, err := metrics.AuthResults(reg)
		if err != nil {
			t.Fatal(err)
		}
		if n := promtest.ToFloat64(c2.WithLabelValues(c.method, c.result)); n != 2 {
			t.Errorf("%s=%s counted %v, want 2", c.method, c.result, n)
		}
	}
}
