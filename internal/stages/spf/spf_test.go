package spf

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/pipeline"
)

// TestStage: the result, its property and the scratch values for a
// sender, the HELO identity for the null sender, and no check for
// authenticated clients or mail that did not come over SMTP. The
// result kinds themselves are in internal/stages/dmarc's golden tests.
func TestStage(t *testing.T) {
	srv := dnstest.NewServer(t)
	srv.AddTXT("example.com", "v=spf1 ip4:192.0.2.0/24 -all")
	srv.AddTXT("mail.example.com", "v=spf1 a -all")
	srv.AddA("mail.example.com", "192.0.2.9")
	cl, err := dnsx.New(dnsx.Options{Server: srv.Addr(), Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	st, err := New("spf", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.(pipeline.Provisioner).Provision(&pipeline.Env{Resolver: dnsx.ForStages(cl)}); err != nil {
		t.Fatal(err)
	}
	check := func(conn *pipeline.Conn, sender string) string {
		v, err := st.(pipeline.MailHook).OnMail(context.Background(), &pipeline.Txn{Conn: conn, Sender: sender})
		if err != nil || v.Action != pipeline.Continue {
			t.Fatalf("%+v %v", v, err)
		}
		if len(v.Edits.AuthResults) == 0 {
			return "-"
		}
		a := v.Edits.AuthResults[0]
		return a.Result + " " + strings.Join(a.Props, " ") + " " + v.Edits.Scratch[ScratchResult] + " " + v.Edits.Scratch[ScratchDomain]
	}
	smtp := func(ip string) *pipeline.Conn {
		return &pipeline.Conn{Source: pipeline.SourceSMTP, RemoteIP: netip.MustParseAddr(ip), HELO: "mail.example.com"}
	}
	for _, c := range []struct {
		conn         *pipeline.Conn
		sender, want string
	}{
		{smtp("192.0.2.7"), "a@example.com", "pass smtp.mailfrom=a@example.com pass example.com"},
		{smtp("198.51.100.1"), "a@example.com", "fail smtp.mailfrom=a@example.com fail example.com"},
		{smtp("192.0.2.9"), "", "pass smtp.helo=mail.example.com pass mail.example.com"},
		{smtp("192.0.2.7"), "a@nothing.example", "none smtp.mailfrom=a@nothing.example none nothing.example"},
		{&pipeline.Conn{Source: pipeline.SourceSMTP, RemoteIP: netip.MustParseAddr("198.51.100.1"), Identity: &pipeline.Identity{Name: "u"}}, "a@example.com", "-"},
		{&pipeline.Conn{Source: pipeline.SourceHTTP, RemoteIP: netip.MustParseAddr("198.51.100.1")}, "a@example.com", "-"},
		{&pipeline.Conn{Source: pipeline.SourceSMTP, RemoteIP: netip.MustParseAddr("198.51.100.1"), RelayNetwork: true}, "a@example.com", "-"},
	} {
		if got := check(c.conn, c.sender); got != c.want {
			t.Errorf("%v %q: %q, want %q", c.conn.RemoteIP, c.sender, got, c.want)
		}
	}
	// check_submissions: an authenticated client is checked too.
	all, _ := New("spf", map[string]any{"check_submissions": true})
	all.(pipeline.Provisioner).Provision(&pipeline.Env{Resolver: dnsx.ForStages(cl)})
	v, _ := all.(pipeline.MailHook).OnMail(context.Background(), &pipeline.Txn{Sender: "a@example.com",
		Conn: &pipeline.Conn{Source: pipeline.SourceSMTP, RemoteIP: netip.MustParseAddr("198.51.100.1"), Identity: &pipeline.Identity{Name: "u"}}})
	if len(v.Edits.AuthResults) != 1 || v.Edits.AuthResults[0].Result != "fail" {
		t.Errorf("check_submissions: %+v", v.Edits.AuthResults)
	}
	if _, err := New("spf", map[string]any{"strict": true}); err == nil {
		t.Error("unknown option accepted")
	}
}
