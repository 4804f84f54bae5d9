package ratelimit_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/smtp"
	"net/textproto"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/sluice-mta/sluice/internal/apikey"
	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/server"
	tu "github.com/sluice-mta/sluice/internal/testutil"
)

// node is a running relay (SMTP and HTTP listeners) whose pipeline is
// the stage under test followed by a route to a sink.
type node struct {
	smtp, http string
	token      string // an API key of tenant "acme"
	srv        *server.Server
	sink       *tu.Sink
	file       string // the configuration, for a reload
}

// startNode runs a node with stage (the text of one sluice.stage call or
// several) and, when redisAddr is not "", sluice.redis on it. sink may be
// shared between nodes (nil: a new one).
func startNode(t *testing.T, stage, redisAddr string, sink *tu.Sink) *node {
	t.Helper()
	dir := t.TempDir()
	if sink == nil {
		sink = tu.StartSink(t, tu.SinkOptions{})
	}
	n := &node{smtp: tu.FreeAddr(t), http: tu.FreeAddr(t), sink: sink, file: filepath.Join(dir, "pipeline.lua")}
	rd := ""
	if redisAddr != "" {
		rd = fmt.Sprintf("sluice.redis { addr = %q, key_prefix = \"rltest:\", timeout = \"500ms\" }\n", redisAddr)
	}
	src := fmt.Sprintf(`%s
sluice.spool { path = %q }
sluice.events { file = %q }
sluice.listen_smtp { addr = %q, relay_networks = { "127.0.0.0/8" } }
sluice.listen_http { addr = %q }
%s
sluice.stage("route", { on_route = function(msg, rcpt) return sluice.route.relay { host = "127.0.0.1", port = %d, tls = "none" } end })
`, rd, filepath.Join(dir, "spool"), filepath.Join(dir, "events.jsonl"), n.smtp, n.http, stage, sink.Port)
	if err := os.WriteFile(n.file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	keys, err := apikey.Open(apikey.DefaultPath(filepath.Join(dir, "spool")))
	if err != nil {
		t.Fatal(err)
	}
	if n.token, _, err = keys.Create(apikey.CreateOptions{Tenant: "acme"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(n.file)
	if err != nil {
		t.Fatal(err)
	}
	if n.srv, err = server.New(cfg, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if err := n.srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.srv.Stop(context.Background()) })
	return n
}

// send runs one SMTP transaction and returns the first error reply
// (nil: 250 after DATA). Recipients refused at RCPT are reported in
// refused, and the message goes to the others.
func send(t *testing.T, addr, from string, to ...string) (refused []error, err error) {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Mail(from); err != nil {
		return nil, err
	}
	ok := 0
	for _, r := range to {
		if err := c.Rcpt(r); err != nil {
			refused = append(refused, err)
			continue
		}
		ok++
	}
	if ok == 0 {
		return refused, refused[0]
	}
	w, err := c.Data()
	if err != nil {
		return refused, err
	}
	fmt.Fprintf(w, "From: %s\r\nTo: %s\r\nSubject: t\r\n\r\nbody\r\n", from, to[0])
	if err := w.Close(); err != nil {
		return refused, err
	}
	return refused, c.Quit()
}

// wantRefused checks a 450 4.7.1 reply naming the limit.
func wantRefused(t *testing.T, err error, code int, limit string) {
	t.Helper()
	var te *textproto.Error
	if !errors.As(err, &te) || te.Code != code || !strings.HasPrefix(te.Msg, "4.7.1 Rate limit "+limit+" exceeded") {
		t.Fatalf("got %v, want %d 4.7.1 Rate limit %s exceeded ...", err, code, limit)
	}
}

func wantCode(t *testing.T, err error, code int, enh string) {
	t.Helper()
	var te *textproto.Error
	if !errors.As(err, &te) || te.Code != code || !strings.HasPrefix(te.Msg, enh+" ") {
		t.Fatalf("got %v, want %d %s", err, code, enh)
	}
}

// TestSMTPBoundary: with 3/hour per sender domain, 3 messages pass, the
// 4th MAIL FROM gets 450 4.7.1 naming the limit, another sender domain
// is unaffected, and exactly 3 + 1 messages reach the sink.
func TestSMTPBoundary(t *testing.T) {
	n := startNode(t, `sluice.stage("limits", sluice.builtin.ratelimit { limits = { { key = "sender_domain", rate = "3/hour" } } })`, "", nil)
	for i := 0; i < 3; i++ {
		if _, err := send(t, n.smtp, "a@origin.example", "b@dest.example"); err != nil {
			t.Fatalf("message %d: %v", i+1, err)
		}
	}
	_, err := send(t, n.smtp, "other@ORIGIN.example", "b@dest.example")
	wantRefused(t, err, 450, "sender_domain")
	if _, err := send(t, n.smtp, "a@elsewhere.example", "b@dest.example"); err != nil {
		t.Fatalf("another sender domain: %v", err)
	}
	tu.WaitFor(t, "4 messages at the sink", func() bool { return len(n.sink.Messages()) == 4 })
	if got := counter(t, n.srv, "sluice_ratelimit_checks_total", "refused"); got != 1 {
		t.Errorf("refused checks counted: %v, want 1", got)
	}
}

// TestSMTPRecovery: 5 per 3 seconds per client IP; the 6th is refused and a
// message passes again once the window refills.
func TestSMTPRecovery(t *testing.T) {
	n := startNode(t, `sluice.stage("limits", sluice.builtin.ratelimit { key = "client_ip", rate = "5/3s", code = 451 })`, "", nil)
	for i := 0; i < 5; i++ {
		if _, err := send(t, n.smtp, "a@origin.example", "b@dest.example"); err != nil {
			t.Fatalf("message %d: %v", i+1, err)
		}
	}
	refusedOnce := false
	for i := 0; i < 20 && !refusedOnce; i++ {
		_, err := send(t, n.smtp, "a@origin.example", "b@dest.example")
		if err != nil {
			wantRefused(t, err, 451, "client_ip")
			refusedOnce = true
		}
	}
	if !refusedOnce {
		t.Fatal("25 messages in a row passed a 5/3s limit")
	}
	tu.WaitFor(t, "the limit to let a message through again", func() bool {
		_, err := send(t, n.smtp, "a@origin.example", "b@dest.example")
		return err == nil
	})
}

// TestBurst: 60/hour with burst 3 lets 3 messages through at once; the
// 4th is refused (one more would need a minute).
func TestBurst(t *testing.T) {
	n := startNode(t, `sluice.stage("limits", sluice.builtin.ratelimit { limits = { { key = "client_ip", rate = "60/hour", burst = 3 } } })`, "", nil)
	for i := 0; i < 3; i++ {
		if _, err := send(t, n.smtp, "a@origin.example", "b@dest.example"); err != nil {
			t.Fatalf("message %d: %v", i+1, err)
		}
	}
	_, err := send(t, n.smtp, "a@origin.example", "b@dest.example")
	wantRefused(t, err, 450, "client_ip")
	if !strings.Contains(err.Error(), "(60/hour), try again in 60 s") {
		t.Errorf("reply %q does not give the 60 s refill", err)
	}
}

// TestPerRecipient: 4 recipients per hour per recipient domain: of 5
// RCPTs to one domain, 4 pass and 1 gets 450 4.7.1; a message-counted
// recipient_domain limit charges a message once per domain.
func TestPerRecipient(t *testing.T) {
	n := startNode(t, `sluice.stage("limits", sluice.builtin.ratelimit { limits = {
  { key = "recipient_domain", rate = "4/hour", count = "recipients" },
  { key = "recipient_domain", rate = "2/hour", name = "domain_messages" },
} })`, "", nil)
	refused, err := send(t, n.smtp, "a@origin.example", "r1@dest.example", "r2@dest.example", "r3@dest.example", "r4@dest.example", "r5@dest.example")
	if err != nil {
		t.Fatal(err)
	}
	if len(refused) != 1 {
		t.Fatalf("%d recipients refused, want 1: %v", len(refused), refused)
	}
	for _, e := range refused {
		wantRefused(t, e, 450, "recipient_domain_recipients")
	}
	tu.WaitFor(t, "the message at the sink", func() bool { return len(n.sink.Messages()) == 1 })
	if got := n.sink.Messages()[0].Rcpts; len(got) != 4 {
		t.Fatalf("sink got recipients %v, want 4", got)
	}
	// domain_messages (2/hour) counts a message once per domain: a
	// message with 2 recipients at other.example and one with 1 pass
	// (3 of 4 recipients), the third message is refused by
	// domain_messages though a recipient is left.
	if _, err := send(t, n.smtp, "a@origin.example", "x@other.example", "y@other.example"); err != nil {
		t.Fatal(err)
	}
	if _, err := send(t, n.smtp, "a@origin.example", "z@other.example"); err != nil {
		t.Fatalf("second message to other.example: %v", err)
	}
	_, err = send(t, n.smtp, "a@origin.example", "w@other.example")
	wantRefused(t, err, 450, "domain_messages")
}

// TestConnections: 2 connections per hour per client IP: the third
// connection is greeted with 421 4.7.1 naming the limit, and closed.
func TestConnections(t *testing.T) {
	n := startNode(t, `sluice.stage("limits", sluice.builtin.ratelimit { key = "client_ip", count = "connections", rate = "2/hour" })`, "", nil)
	for i := 0; i < 2; i++ {
		if _, err := send(t, n.smtp, "a@origin.example", "b@dest.example"); err != nil {
			t.Fatalf("connection %d: %v", i+1, err)
		}
	}
	_, err := smtp.Dial(n.smtp)
	wantRefused(t, err, 421, "client_ip_connections")
}

// TestHTTP429: over the API the same refusal is 429 with Retry-After in
// whole seconds (the refill time), and the JSON names the limit.
func TestHTTP429(t *testing.T) {
	n := startNode(t, `sluice.stage("limits", sluice.builtin.ratelimit { limits = { { key = "tenant", rate = "2/hour" } } })`, "", nil)
	body := third429(t, n)
	var e struct {
		Error struct {
			Code     string `json:"code"`
			Message  string `json:"message"`
			SMTPCode int    `json:"smtp_code"`
			Enhanced string `json:"enhanced"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatal(err)
	}
	if e.Error.Code != "tempfail" || e.Error.SMTPCode != 450 || e.Error.Enhanced != "4.7.1" || !strings.Contains(e.Error.Message, "Rate limit tenant exceeded") {
		t.Fatalf("error %+v", e.Error)
	}
}

// third429 posts three messages to n, whose tenant is allowed 2 an hour:
// two are accepted, the third gets 429 with Retry-After about half an
// hour (the refill time). It returns the third's body.
func third429(t *testing.T, n *node) []byte {
	t.Helper()
	for i := 0; i < 2; i++ {
		if st, _, body := post(t, n); st != http.StatusAccepted {
			t.Fatalf("request %d: %d %s", i+1, st, body)
		}
	}
	st, h, body := post(t, n)
	if st != http.StatusTooManyRequests {
		t.Fatalf("3rd request: %d %s, want 429", st, body)
	}
	ra, err := strconv.Atoi(h.Get("Retry-After"))
	if err != nil || ra < 1790 || ra > 1800 {
		t.Fatalf("Retry-After %q, want about 1800 (half an hour)", h.Get("Retry-After"))
	}
	return body
}

func post(t *testing.T, n *node) (int, http.Header, []byte) {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+n.http+"/v1/messages",
		strings.NewReader(`{"from":"app@origin.example","to":["b@dest.example"],"subject":"s","text":"hi"}`))
	req.Header.Set("Authorization", "Bearer "+n.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp.StatusCode, resp.Header, b.Bytes()
}

// TestCluster: two nodes on one redis-server enforce one combined limit:
// 6/hour per sender domain, messages alternating between the nodes: 6
// pass in all, then both refuse.
func TestCluster(t *testing.T) {
	rs := tu.StartRedis(t)
	stage := `sluice.stage("limits", sluice.builtin.ratelimit { store = "redis", limits = { { key = "sender_domain", rate = "6/hour" } } })`
	a := startNode(t, stage, rs.Addr, nil)
	b := startNode(t, stage, rs.Addr, a.sink)
	nodes := []*node{a, b}
	for i := 0; i < 6; i++ {
		if _, err := send(t, nodes[i%2].smtp, "a@origin.example", "b@dest.example"); err != nil {
			t.Fatalf("message %d (node %d): %v", i+1, i%2, err)
		}
	}
	for i, nd := range nodes {
		_, err := send(t, nd.smtp, "a@origin.example", "b@dest.example")
		if err == nil {
			t.Fatalf("node %d accepted the 7th message", i)
		}
		wantRefused(t, err, 450, "sender_domain")
	}
	tu.WaitFor(t, "6 messages at the sink", func() bool { return len(a.sink.Messages()) == 6 })
}

// TestRedisDown: with Redis stopped, on_store_error = "allow" lets mail
// through and "tempfail" answers 451 4.3.0 (HTTP 503); both count
// sluice_ratelimit_store_errors_total.
func TestRedisDown(t *testing.T) {
	rs := tu.StartRedis(t)
	open := startNode(t, `sluice.stage("limits", sluice.builtin.ratelimit { store = "redis", on_store_error = "allow", key = "sender_domain", rate = "100/hour" })`, rs.Addr, nil)
	closed := startNode(t, `sluice.stage("limits", sluice.builtin.ratelimit { store = "redis", on_store_error = "tempfail", key = "sender_domain", rate = "100/hour" })`, rs.Addr, nil)
	for _, n := range []*node{open, closed} {
		if _, err := send(t, n.smtp, "a@origin.example", "b@dest.example"); err != nil {
			t.Fatalf("with Redis up: %v", err)
		}
	}
	rs.Stop()
	if _, err := send(t, open.smtp, "a@origin.example", "b@dest.example"); err != nil {
		t.Fatalf("fail-open node refused with Redis down: %v", err)
	}
	_, err := send(t, closed.smtp, "a@origin.example", "b@dest.example")
	wantCode(t, err, 451, "4.3.0")
	if st, _, body := post(t, closed); st != http.StatusServiceUnavailable {
		t.Fatalf("HTTP with Redis down, fail closed: %d %s, want 503", st, body)
	}
	for _, n := range []*node{open, closed} {
		if got := counter(t, n.srv, "sluice_ratelimit_store_errors_total", ""); got < 1 {
			t.Errorf("store errors counted: %v", got)
		}
	}
	rs.Start()
	if _, err := send(t, closed.smtp, "a@origin.example", "b@dest.example"); err != nil {
		t.Fatalf("fail-closed node after Redis came back: %v", err)
	}
}

// TestReloadKeepsState: a reload with unchanged options keeps the
// counts (the store is the node's); a changed rate starts afresh.
func TestReloadKeepsState(t *testing.T) {
	stage := `sluice.stage("limits", sluice.builtin.ratelimit { key = "client_ip", rate = "2/hour" })`
	n := startNode(t, stage, "", nil)
	for i := 0; i < 2; i++ {
		if _, err := send(t, n.smtp, "a@origin.example", "b@dest.example"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := n.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	_, err := send(t, n.smtp, "a@origin.example", "b@dest.example")
	wantRefused(t, err, 450, "client_ip")
	src, _ := os.ReadFile(n.file)
	if err := os.WriteFile(n.file, bytes.Replace(src, []byte(`"2/hour"`), []byte(`"3/hour"`), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := n.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := send(t, n.smtp, "a@origin.example", "b@dest.example"); err != nil {
		t.Fatalf("after the rate changed: %v", err)
	}
}

// TestLuaCheck: sluice.ratelimit.check in a Lua stage shares the node's
// store: two stages (two scripts, any pooled state) counting one key
// allow 3 in all; the retry-after comes back in seconds.
func TestLuaCheck(t *testing.T) {
	n := startNode(t, `
sluice.stage("lua1", { on_mail = function(txn)
  if txn.sender:find("^one@") == nil then return end
  local ok, retry = sluice.ratelimit.check("sender:" .. txn.sender:match("@(.*)$"), "3/hour")
  if not ok then return sluice.tempfail(450, "4.7.1", "lua1 limit, retry in " .. math.ceil(retry) .. " s") end
end })
sluice.stage("lua2", { on_mail = function(txn)
  if txn.sender:find("^two@") == nil then return end
  local ok, retry = sluice.ratelimit.check("sender:" .. txn.sender:match("@(.*)$"), "3/hour")
  if ok == nil then return sluice.tempfail(451, "4.3.0", retry) end
  if not ok then return sluice.tempfail(450, "4.7.1", "lua2 limit, retry in " .. math.ceil(retry) .. " s") end
end })`, "", nil)
	senders := []string{"one@origin.example", "two@origin.example", "one@origin.example"}
	for i, s := range senders {
		if _, err := send(t, n.smtp, s, "b@dest.example"); err != nil {
			t.Fatalf("message %d: %v", i+1, err)
		}
	}
	_, err := send(t, n.smtp, "two@origin.example", "b@dest.example")
	var te *textproto.Error
	if !errors.As(err, &te) || te.Code != 450 || te.Msg != "4.7.1 lua2 limit, retry in 1200 s" {
		t.Fatalf("4th: %v, want 450 4.7.1 lua2 limit, retry in 1200 s", err)
	}
	if got := counter(t, n.srv, "sluice_ratelimit_checks_total", "refused"); got != 1 {
		t.Errorf("refused Lua checks counted: %v", got)
	}
}

// TestValidate: store = "redis" without sluice.redis, and bad options,
// are refused when the configuration loads, naming the key.
func TestValidate(t *testing.T) {
	for _, c := range []struct{ opts, want string }{
		{`store = "redis", key = "tenant", rate = "1/hour"`, `needs sluice.redis`},
		{`key = "tenant"`, `rate: required`},
		{`key = "helo", rate = "1/hour"`, `key: want one of`},
		{`limits = { { key = "tenant", rate = "1/fortnight" } }`, `limits[1].rate: rate "1/fortnight"`},
		{`limits = { { key = "tenant", rate = "1/hour", burst = 0 } }`, `limits[1].burst`},
		{`limits = { { key = "tenant", rate = "1/hour", count = "connections" } }`, `limits[1].count: "connections"`},
		{`limits = { { key = "tenant", rate = "1/hour" }, { key = "tenant", rate = "5/day" } }`, `limits[2].name: two limits are named "tenant"`},
		{`limits = {}`, `at least one limit`},
		{`rate = "1/hour"`, `rate: set key too`},
		{`key = "tenant", rate = "1/hour", colour = "red"`, `colour: unknown option`},
		{`key = "tenant", rate = "1/hour", on_store_error = "maybe"`, `on_store_error: want one of`},
		{`key = "tenant", rate = "1/hour", code = 550`, `code: want 450 or 451`},
	} {
		p := filepath.Join(t.TempDir(), "pipeline.lua")
		src := `sluice.listen_smtp { addr = "127.0.0.1:0" }
sluice.stage("limits", sluice.builtin.ratelimit { ` + c.opts + ` })`
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(p)
		if err == nil {
			_, err = server.New(cfg, slog.New(slog.DiscardHandler))
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error with %q", c.opts, err, c.want)
		}
	}
}

// counter sums a counter family's samples (only those with label
// result = want, when want is not "").
func counter(t *testing.T, srv *server.Server, name, result string) float64 {
	t.Helper()
	mfs, err := srv.Metrics().Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if result == "" || label(m, "result") == result {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
