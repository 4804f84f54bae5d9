package relay

import (
	"context"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// rcptStage refuses "blocked" at on_rcpt, so the test can tell a policy
// refusal from a suppression.
type rcptStage struct{}

func (rcptStage) Name() string { return "rcpt" }
func (rcptStage) OnRcpt(ctx context.Context, txn *pipeline.Txn, r *pipeline.Recipient) (pipeline.Verdict, error) {
	if r.Local == "blocked" {
		return pipeline.RejectVerdict(550, pipeline.EnhancedCode{5, 7, 1}, "relay denied"), nil
	}
	return pipeline.Verdict{}, nil
}

// setupSupp is a relay whose suppression list is the spool's, enabled.
func setupSupp(t *testing.T) (*Relay, *spool.Spool) {
	t.Helper()
	r, sp := setup(t, rcptStage{})
	sp.SetSuppressionPolicy(spool.SuppressionPolicy{Enabled: true, Classes: []string{"InvalidRecipient"}})
	r.supp = sp
	return r, sp
}

func tenantSession(r *Relay, tenant string) *Session {
	c := &pipeline.Conn{Source: pipeline.SourceSMTP, RelayNetwork: true}
	if tenant != "" {
		c.Identity = &pipeline.Identity{Name: "k1", Tenant: tenant}
	}
	return r.NewSession(c)
}

func outboxTypes(t *testing.T, sp *spool.Spool, typ string) []string {
	t.Helper()
	evs, err := sp.ReadOutbox(0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range evs {
		if e.Type == typ {
			out = append(out, string(e.JSON))
		}
	}
	return out
}

func TestSuppressedAtRcpt(t *testing.T) {
	r, sp := setupSupp(t)
	ctx := context.Background()
	if _, err := sp.AddSuppression(&spool.Suppression{Tenant: "acme", Address: "gone@Y.test", Source: spool.SuppressionBounce,
		Class: "InvalidRecipient", Reason: "550 5.1.1 no such user"}); err != nil {
		t.Fatal(err)
	}

	txn, err := tenantSession(r, "acme").Begin(ctx, "s@a.test", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The domain's case does not matter.
	_, err = txn.Rcpt(ctx, "gone@Y.TEST")
	if !IsSuppressed(err) {
		t.Fatalf("Rcpt(suppressed) = %v; want a SuppressedError", err)
	}
	rep := pipeline.Reply(err)
	if rep.Code != 550 || rep.Enhanced.String() != "5.7.1" || !strings.Contains(rep.Message, "<gone@Y.TEST>: recipient is on the suppression list of tenant acme (hard bounce InvalidRecipient on ") ||
		!strings.HasSuffix(rep.Message, "remove it to send again") || strings.Contains(rep.Message, "no such user") {
		t.Errorf("reply %d %s %q", rep.Code, rep.Enhanced, rep.Message)
	}
	// A policy refusal stays a rejection, not a suppression.
	if _, err := txn.Rcpt(ctx, "blocked@y.test"); err == nil || IsSuppressed(err) {
		t.Errorf("Rcpt(blocked) = %v; want a plain refusal", err)
	}
	if _, err := txn.Rcpt(ctx, "ok@y.test"); err != nil {
		t.Fatalf("Rcpt(ok) = %v", err)
	}
	rc, err := txn.Commit(ctx, message(t, txn, "hi"), CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rc.Queued != 1 || len(rc.Recipients) != 1 || rc.Recipients[0].Address != "ok@y.test" {
		t.Errorf("receipt %+v; want only ok@y.test queued", rc)
	}
	if got := queued(t, sp); len(got) != 1 || got[0] != "smtp:ok@y.test" {
		t.Errorf("queued %v; want only smtp:ok@y.test", got)
	}
	// One suppressed event (not rejected) for the suppressed recipient,
	// one rejected for the blocked one, received for the other.
	if got, want := eventTypes(t, sp, txn.ID()), "suppressed:gone@Y.TEST rejected:blocked@y.test received:ok@y.test"; got != want {
		t.Errorf("events %q; want %q", got, want)
	}
	h, _ := sp.History(txn.ID())
	ev := h[0]
	if ev.Tenant != "acme" || ev.BounceClass != "InvalidRecipient" || ev.Response == nil || ev.Response.Code != 550 ||
		!strings.HasSuffix(ev.Response.Text, "; reason: 550 5.1.1 no such user") || ev.Source != pipeline.SourceSMTP {
		t.Errorf("suppressed event %+v (response %+v)", ev, ev.Response)
	}
}

func TestSuppressionScope(t *testing.T) {
	r, sp := setupSupp(t)
	ctx := context.Background()
	for _, tn := range []string{"acme", ""} {
		if _, err := sp.AddSuppression(&spool.Suppression{Tenant: tn, Address: "gone-" + tn + "@y.test", Source: spool.SuppressionAPI}); err != nil {
			t.Fatal(err)
		}
	}
	rcpt := func(tenant, sender, addr string) error {
		t.Helper()
		txn, err := tenantSession(r, tenant).Begin(ctx, sender, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer txn.Abort()
		_, err = txn.Rcpt(ctx, addr)
		return err
	}
	for _, c := range []struct {
		name, tenant, sender, addr string
		suppressed                 bool
	}{
		{"own tenant", "acme", "s@a.test", "gone-acme@y.test", true},
		{"other tenant's entry", "other", "s@a.test", "gone-acme@y.test", false},
		{"no tenant: the \"\" tenant", "", "s@a.test", "gone-@y.test", true},
		{"no tenant, acme's entry", "", "s@a.test", "gone-acme@y.test", false},
		{"a DSN (null sender) is never refused", "acme", "", "gone-acme@y.test", false},
		{"local part case is kept", "acme", "s@a.test", "Gone-acme@y.test", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := rcpt(c.tenant, c.sender, c.addr)
			if IsSuppressed(err) != c.suppressed || (!c.suppressed && err != nil) {
				t.Errorf("Rcpt = %v; want suppressed %v", err, c.suppressed)
			}
			if c.suppressed && !strings.Contains(pipeline.Reply(err).Message, "added by api on ") {
				t.Errorf("reply %q does not say who added it", pipeline.Reply(err).Message)
			}
		})
	}
	if n := len(outboxTypes(t, sp, pipeline.EventSuppressed)); n != 2 {
		t.Errorf("%d suppressed events; want 2", n)
	}
	if n := len(outboxTypes(t, sp, pipeline.EventRejected)); n != 0 {
		t.Errorf("%d rejected events; want none", n)
	}
	// Disabled: enforced no more.
	sp.SetSuppressionPolicy(spool.SuppressionPolicy{Enabled: false})
	if err := rcpt("acme", "s@a.test", "gone-acme@y.test"); err != nil {
		t.Errorf("disabled list: Rcpt = %v", err)
	}
}
