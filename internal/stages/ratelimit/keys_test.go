package ratelimit

import (
	"net/netip"
	"testing"

	"github.com/sluice-mta/sluice/pipeline"
)

// TestKeyValue: what each key counts per, and when a limit does not
// apply (no identity, no tenant, the null sender, a domain already
// counted for this message).
func TestKeyValue(t *testing.T) {
	anon := &pipeline.Conn{RemoteIP: netip.MustParseAddr("2001:db8:1:2:3:4:5:6")}
	authed := &pipeline.Conn{RemoteIP: netip.MustParseAddr("::ffff:192.0.2.9"),
		Identity: &pipeline.Identity{Name: "alice", Tenant: "acme", Method: "smtp-auth"}}
	r1, _ := pipeline.NewRecipient("a@Dest.example")
	r2, _ := pipeline.NewRecipient("b@dest.example")
	txn := &pipeline.Txn{Conn: authed, Sender: `"x@y"@Origin.Example`}
	done := &pipeline.Txn{Conn: authed, Sender: "", Recipients: []*pipeline.Recipient{r1}}
	for _, c := range []struct {
		key, count string
		conn       *pipeline.Conn
		txn        *pipeline.Txn
		r          *pipeline.Recipient
		want       string
	}{
		{KeyClientIP, CountMessages, anon, nil, nil, "2001:db8:1:2::/64"},
		{KeyClientIP, CountMessages, authed, nil, nil, "192.0.2.9"},
		{KeyIdentity, CountMessages, authed, txn, nil, "smtp-auth:alice"},
		{KeyIdentity, CountMessages, anon, txn, nil, ""},
		{KeyTenant, CountMessages, authed, txn, nil, "acme"},
		{KeyTenant, CountMessages, anon, txn, nil, ""},
		{KeySenderDomain, CountMessages, authed, txn, nil, "origin.example"},
		{KeySenderDomain, CountMessages, authed, done, nil, ""},
		{KeyRecipientDomain, CountMessages, authed, txn, r2, "dest.example"},
		{KeyRecipientDomain, CountMessages, authed, done, r2, ""},
		{KeyRecipientDomain, CountRecipients, authed, done, r2, "dest.example"},
	} {
		got := keyValue(&limit{key: c.key, count: c.count}, c.conn, c.txn, c.r)
		if got != c.want {
			t.Errorf("%s/%s: %q, want %q", c.key, c.count, got, c.want)
		}
	}
}
