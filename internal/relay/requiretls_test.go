package relay

import (
	"context"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// TestREQUIRETLSAccepted: "TLS-Required: No" is recorded as
// Params.TLSOptional unless the message has REQUIRETLS (which wins, RFC
// 8689 section 5); the DSN of a REQUIRETLS message requires TLS too and
// returns the header only although RET=FULL.
func TestREQUIRETLSAccepted(t *testing.T) {
	r, sp := setup(t)
	commit := func(requireTLS bool, header string, rcpts ...string) string {
		t.Helper()
		txn := begin(t, r, pipeline.SourceSMTP, rcpts...)
		txn.T.Params.RequireTLS = requireTLS
		txn.T.Params.Ret = "FULL"
		m, err := pipeline.ParseMessage(txn.T, []byte(header+"Subject: hi\r\n\r\nsecret body\r\n"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := txn.Commit(context.Background(), m, CommitOptions{OneReply: true}); err != nil {
			t.Fatal(err)
		}
		return txn.ID()
	}
	params := func(id string) pipeline.MailParams {
		t.Helper()
		var p *pipeline.MailParams
		sp.ScanRecipients(func(m *spool.Meta, _ *spool.Recipient) error {
			if m.ID == id {
				p = &m.Params
			}
			return nil
		})
		if p == nil {
			t.Fatalf("%s not spooled", id)
		}
		return *p
	}
	if p := params(commit(false, "TLS-Required:  no \r\n", "ok@b.test")); !p.TLSOptional || p.RequireTLS {
		t.Fatalf("TLS-Required: No: %+v", p)
	}
	if p := params(commit(false, "TLS-Required: Yes\r\n", "ok@b.test")); p.TLSOptional {
		t.Fatalf("TLS-Required: Yes: %+v", p)
	}
	id := commit(true, "TLS-Required: No\r\n", "ok@b.test", "perm@b.test")
	if p := params(id); p.TLSOptional || !p.RequireTLS {
		t.Fatalf("REQUIRETLS and TLS-Required: No: %+v", p)
	}
	dm, body := dsnOf(t, sp)
	if !dm.Params.RequireTLS || dm.Meta["dsn_of"] != id {
		t.Fatalf("DSN meta %+v", dm)
	}
	if !strings.Contains(body, "text/rfc822-headers") || strings.Contains(body, "secret body") {
		t.Fatalf("the DSN of a REQUIRETLS message returned more than the header:\n%s", body)
	}
}
