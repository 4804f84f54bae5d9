package dryrun

import (
	"context"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
)

// TestRouteQueryNullMX: for a domain with a null MX (RFC 7505) the route
// query says that delivery would bounce (556 5.1.10) instead of listing
// "." as a mail exchanger.
func TestRouteQueryNullMX(t *testing.T) {
	dns := dnstest.NewServer(t)
	dns.SetNullMX("nomail.example")
	cfg, err := config.Parse("mx.lua", []byte(`local sluice = require("sluice")
sluice.listen_smtp { addr = "127.0.0.1:0" }
sluice.stage("routing", { on_route = function(msg, rcpt) return sluice.route.mx() end })
`))
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(cfg, dns.Addr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	tr, err := r.Route(context.Background(), "x@nomail.example", Options{})
	if err != nil || len(tr.Recipients) != 1 {
		t.Fatalf("%+v %v", tr, err)
	}
	rc := tr.Recipients[0]
	if len(rc.MX) != 0 || !strings.Contains(rc.MXErr, "null MX") || !strings.Contains(rc.MXErr, "556 5.1.10") {
		t.Errorf("null MX: mx %+v, mx_error %q", rc.MX, rc.MXErr)
	}
}

// TestBadMessageErrors: an empty message says so (it said "EOF"), and a
// message that is not RFC 5322 is named with a short, quoted start of
// the offending line, not the line's raw bytes.
func TestBadMessageErrors(t *testing.T) {
	r := newRunner(t)
	_, err := r.Run(context.Background(), Options{To: []string{"bob@example.test"}, Data: []byte{}})
	if err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("empty message: %v", err)
	}
	garbage := append([]byte{0xff, 0xfe, 0x01}, []byte(strings.Repeat("\x80garbage", 500))...)
	_, err = r.Run(context.Background(), Options{To: []string{"bob@example.test"}, Data: garbage})
	if err == nil || len(err.Error()) > 300 || !utf8.ValidString(err.Error()) || strings.ContainsRune(err.Error(), 0x01) {
		t.Errorf("garbage message: %q", err)
	}
}
