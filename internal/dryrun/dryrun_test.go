package dryrun

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/auth"
	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/delivery"
)

const testConfig = `local sluice = require("sluice")
sluice.local_domains { "example.test" }
sluice.listen_smtp { addr = "127.0.0.1:0" }
sluice.stage("gate", {
  on_connect = function(conn)
    if conn.ip == "192.0.2.66" then
      return sluice.reject(554, "5.7.1", "Go away")
    end
  end,
  on_auth = function(conn, creds)
    if creds.username == "mallory" then
      return sluice.reject(535, "5.7.8", "Not you")
    end
  end,
})
sluice.stage("routing", {
  on_route = function(msg, rcpt)
    if rcpt.local_part == "void" then
      return sluice.discard("nobody reads it")
    end
    if rcpt.local_part == "gone" then
      return sluice.reject(550, "5.1.1", "No such user")
    end
    return sluice.route.relay {
      host = "smtp.partner.example", port = 587, tls = "required",
      auth = { user = "relay-user", pass = "s3cret" },
    }
  end,
})
`

func newRunner(t *testing.T) *Runner { return runnerFor(t, "test.lua", testConfig) }

// runnerFor builds a Runner for the configuration src, named file.
func runnerFor(t *testing.T, file, src string) *Runner {
	t.Helper()
	cfg, err := config.Parse(file, []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(cfg, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

// TestRelayPasswordIsRedacted: a relay route's password appears nowhere
// in the trace, text or JSON.
func TestRelayPasswordIsRedacted(t *testing.T) {
	r := newRunner(t)
	tr, err := r.Run(context.Background(), Options{From: "a@example.test", To: []string{"bob@example.test"}})
	if err != nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	if err := tr.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	js, _ := json.Marshal(tr)
	for name, out := range map[string]string{"text": text.String(), "json": string(js)} {
		if strings.Contains(out, "s3cret") {
			t.Errorf("%s output shows the relay password:\n%s", name, out)
		}
	}
	if len(tr.Recipients) != 1 || tr.Recipients[0].Route == nil || tr.Recipients[0].Route.AuthUser != "relay-user" || tr.Recipients[0].Route.AuthPass != "(redacted)" {
		t.Errorf("recipients %+v", tr.Recipients)
	}
	if !strings.Contains(text.String(), "route relay smtp.partner.example:587 tls=required auth=relay-user") {
		t.Errorf("text:\n%s", text.String())
	}
}

// TestRefusalsBeforeMail: a refusal at on_connect or on_auth ends the run
// at that step, with the SMTP reply and, over HTTP, the API's status.
func TestRefusalsBeforeMail(t *testing.T) {
	r := newRunner(t)
	ctx := context.Background()
	tests := []struct {
		name             string
		ip               string
		o                Options
		step             string
		code, httpStatus int
	}{
		{"connect smtp", "192.0.2.66", Options{}, "connect", 554, 0},
		{"connect http", "192.0.2.66", Options{Source: "http", Auth: "k1"}, "connect", 554, 403},
		{"auth smtp", "192.0.2.1", Options{Auth: "mallory"}, "auth", 535, 0},
		{"auth http", "192.0.2.1", Options{Source: "http", Auth: "mallory"}, "auth", 535, 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := tt.o
			o.RemoteIP = netip.MustParseAddr(tt.ip)
			o.From, o.To = "a@example.test", []string{"bob@example.test"}
			tr, err := r.Run(ctx, o)
			if err != nil {
				t.Fatal(err)
			}
			if tr.Reply == nil || tr.Reply.Step != tt.step || tr.Reply.Code != tt.code || tr.Reply.HTTPStatus != tt.httpStatus {
				t.Errorf("reply %+v, want step %s code %d HTTP %d", tr.Reply, tt.step, tt.code, tt.httpStatus)
			}
			if len(tr.Calls) == 0 || tr.Calls[len(tr.Calls)-1].Verdict != "reject" {
				t.Errorf("calls %+v", tr.Calls)
			}
			if tr.MessageID != "" || len(tr.Recipients) != 0 {
				t.Errorf("a transaction began: %+v", tr)
			}
		})
	}
}

// TestDiscardAtRoute: a recipient dropped at on_route is "discarded"
// with a discarded event, and the message is still accepted.
func TestDiscardAtRoute(t *testing.T) {
	r := newRunner(t)
	tr, err := r.Run(context.Background(), Options{From: "a@example.test", To: []string{"void@example.test", "bob@example.test"}})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, rc := range tr.Recipients {
		got[rc.Address] = rc.Status
	}
	if got["void@example.test"] != "discarded" || got["bob@example.test"] != "queued" || tr.Reply.Code != 250 {
		t.Errorf("recipients %v reply %+v", got, tr.Reply)
	}
	var types []string
	for _, ev := range tr.Events {
		types = append(types, ev.Type+" "+ev.Recipient)
	}
	if strings.Join(types, ",") != "discarded void@example.test,received bob@example.test" {
		t.Errorf("events %v", types)
	}
	rt, err := r.Route(context.Background(), "void@example.test", Options{})
	if err != nil || len(rt.Recipients) != 1 || rt.Recipients[0].Status != "discarded" || rt.Reply != nil {
		t.Errorf("route query of a discarded address: %+v %v", rt, err)
	}
}

func TestBadOptions(t *testing.T) {
	r := newRunner(t)
	ctx := context.Background()
	for name, o := range map[string]Options{
		"http without identity": {Source: "http", To: []string{"a@example.test"}},
		"unknown source":        {Source: "lmtp", To: []string{"a@example.test"}},
		"no recipient":          {From: "a@example.test"},
		"not a message":         {To: []string{"a@example.test"}, Data: []byte("no header here")},
	} {
		if _, err := r.Run(ctx, o); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := r.Route(ctx, "not an address", Options{}); err == nil {
		t.Error("route of a non-address: no error")
	}
}

// TestAuthUsesTheUsersFile: --auth USER of a user in sluice.auth's users
// file gets that user's tenant and allowed senders, so the sender rule
// refuses a sender the user may not use, as a real login would.
func TestAuthUsesTheUsersFile(t *testing.T) {
	dir := t.TempDir()
	h, err := auth.Hash("pw")
	if err != nil {
		t.Fatal(err)
	}
	users := filepath.Join(dir, "users")
	if err := os.WriteFile(users, []byte((&auth.User{Name: "alice", Tenant: "acme", Hash: h, Senders: []string{"acme.example"}}).Line()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runnerFor(t, filepath.Join(dir, "test.lua"), testConfig+`sluice.auth { users = "users" }
`)
	ctx := context.Background()
	tr, err := r.Run(ctx, Options{Auth: "alice", From: "x@other.example", To: []string{"bob@elsewhere.example"}})
	if err != nil {
		t.Fatal(err)
	}
	if tr.Client.Tenant != "acme" || tr.Reply.Step != "mail" || tr.Reply.Code != 550 || tr.Reply.Enhanced != "5.7.1" {
		t.Errorf("alice sending as x@other.example: client %+v reply %+v", tr.Client, tr.Reply)
	}
	tr, err = r.Run(ctx, Options{Auth: "alice", From: "x@acme.example", To: []string{"bob@elsewhere.example"}})
	if err != nil || tr.Reply.Code != 250 {
		t.Errorf("alice sending as x@acme.example (relay as an authenticated user): %+v %v", tr.Reply, err)
	}
	tr, err = r.Run(ctx, Options{Auth: "bob", From: "x@other.example", To: []string{"bob@elsewhere.example"}})
	if err != nil || tr.Reply.Code != 250 || tr.Client.Tenant != "" {
		t.Errorf("bob, not in the users file: %+v %+v %v", tr.Client, tr.Reply, err)
	}
}

// TestListenerChoice: --listener picks the SMTP listener whose
// relay_networks apply; an unknown name is an error naming the others.
func TestListenerChoice(t *testing.T) {
	r := runnerFor(t, "two.lua", `local sluice = require("sluice")
sluice.listen_smtp { addr = "127.0.0.1:0", name = "mx" }
sluice.listen_smtp { addr = "127.0.0.1:1", name = "apps", relay_networks = { "10.0.0.0/8" }, hostname = "out.example.test" }
`)
	ctx := context.Background()
	o := Options{RemoteIP: netip.MustParseAddr("10.1.2.3"), From: "a@x.example", To: []string{"b@elsewhere.example"}}
	tr, err := r.Run(ctx, o)
	if err != nil || tr.Reply.Code != 550 || tr.Client.RelayNetwork {
		t.Errorf("on mx: %+v %+v %v", tr.Client, tr.Reply, err)
	}
	o.Listener = "apps"
	tr, err = r.Run(ctx, o)
	if err != nil || tr.Reply.Code != 250 || !tr.Client.RelayNetwork || !strings.Contains(strings.Join(tr.Added, "\n"), "by out.example.test") {
		t.Errorf("on apps: %+v %+v %v %v", tr.Client, tr.Reply, tr.Added, err)
	}
	o.Listener = "nope"
	if _, err := r.Run(ctx, o); err == nil || !strings.Contains(err.Error(), "mx, apps") {
		t.Errorf("unknown listener: %v", err)
	}
}

// TestDSNIsMarked: a recipient refused at on_route gets a DSN, which runs
// the pipeline as a message of its own: its calls and events are marked.
func TestDSNIsMarked(t *testing.T) {
	r := newRunner(t)
	tr, err := r.Run(context.Background(), Options{From: "a@example.test", To: []string{"gone@example.test", "bob@example.test"}})
	if err != nil {
		t.Fatal(err)
	}
	var calls, events []string
	for _, c := range tr.Calls {
		calls = append(calls, fmt.Sprintf("%s %s %v", c.Hook, c.Recipient, c.DSN))
	}
	for _, e := range tr.Events {
		events = append(events, fmt.Sprintf("%s %s %v", e.Type, e.Recipient, e.DSN))
	}
	want := "on_connect  false,on_route gone@example.test false,on_route bob@example.test false,on_route a@example.test true"
	if strings.Join(calls, ",") != want {
		t.Errorf("calls\n%s\nwant\n%s", strings.Join(calls, ","), want)
	}
	want = "rejected gone@example.test false,received bob@example.test false,received a@example.test true"
	if strings.Join(events, ",") != want {
		t.Errorf("events\n%s\nwant\n%s", strings.Join(events, ","), want)
	}
	if tr.Reply.Code != 250 {
		t.Errorf("reply %+v", tr.Reply)
	}
}

// TestTLSStringHostNotTried checks the --route line of a host that is
// not tried: its reason, without an empty policy in front of it.
func TestTLSStringHostNotTried(t *testing.T) {
	p := &delivery.TLSPlan{Policy: "dane-or-mta-sts", Hosts: []delivery.HostTLS{
		{Host: "mx.example.net", Note: "TLS policy dane-or-mta-sts: mx.example.net has no DNSSEC-authenticated TLSA records: not tried"},
		{Host: "mx2.example.net", Policy: "dane", TLSA: []string{"3 1 1 ab"}}}}
	want := "TLS dane-or-mta-sts; mx.example.net: TLS policy dane-or-mta-sts: mx.example.net has no DNSSEC-authenticated TLSA records: not tried; mx2.example.net: dane [3 1 1 ab]"
	if got := tlsString(p); got != want {
		t.Errorf("tlsString =\n%q, want\n%q", got, want)
	}
}
