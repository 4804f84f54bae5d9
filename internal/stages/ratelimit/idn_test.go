package ratelimit

import (
	"net/netip"
	"testing"

	"github.com/sluice-mta/sluice/pipeline"
)

// TestDomainKeyIDN: a domain written as U-labels, as A-labels or in
// another case is one key, for the sender and for the recipient domain
// (and one message to both forms counts once per domain).
func TestDomainKeyIDN(t *testing.T) {
	conn := &pipeline.Conn{RemoteIP: netip.MustParseAddr("192.0.2.1")}
	const want = "xn--bcher-kva.example"
	for _, addr := range []string{"a@bücher.example", "a@BÜCHER.example", "a@xn--bcher-kva.example", "a@XN--BCHER-KVA.Example"} {
		r, err := pipeline.NewRecipient(addr)
		if err != nil {
			t.Fatal(addr, err)
		}
		txn := &pipeline.Txn{Conn: conn, Sender: addr}
		if got := keyValue(&limit{key: KeySenderDomain, count: CountMessages}, conn, txn, nil); got != want {
			t.Errorf("sender %s: %q, want %q", addr, got, want)
		}
		if got := keyValue(&limit{key: KeyRecipientDomain, count: CountRecipients}, conn, txn, r); got != want {
			t.Errorf("recipient %s: %q, want %q", addr, got, want)
		}
	}
	u, _ := pipeline.NewRecipient("a@bücher.example")
	a, _ := pipeline.NewRecipient("b@xn--bcher-kva.example")
	txn := &pipeline.Txn{Conn: conn, Sender: "s@origin.example", Recipients: []*pipeline.Recipient{u}}
	if got := keyValue(&limit{key: KeyRecipientDomain, count: CountMessages}, conn, txn, a); got != "" {
		t.Errorf("second form of a domain already counted for this message: %q, want \"\"", got)
	}
	// Not IDNA-valid: kept, in lower case.
	if got := domainKey("Bad_Ü.example"); got != "bad_ü.example" {
		t.Errorf("invalid IDN: %q", got)
	}
}
