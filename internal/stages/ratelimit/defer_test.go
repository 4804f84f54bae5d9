package ratelimit

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"testing"

	rl "github.com/sluice-mta/sluice/internal/ratelimit"
	"github.com/sluice-mta/sluice/pipeline"
)

// callLog is a RateStore that records each call's keys and passes it to
// a real memory store.
type callLog struct {
	mu    sync.Mutex
	calls [][]string
	next  pipeline.RateStore
}

func (c *callLog) Check(ctx context.Context, checks []pipeline.RateCheck, out []pipeline.RateResult) error {
	var keys []string
	for _, ck := range checks {
		keys = append(keys, ck.Limit)
	}
	c.mu.Lock()
	c.calls = append(c.calls, keys)
	c.mu.Unlock()
	return c.next.Check(ctx, checks, out)
}

func (c *callLog) take() [][]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	got := c.calls
	c.calls = nil
	return got
}

// refuser refuses recipients whose local part is "unknown" (a stage after
// the limits).
type refuser struct{}

func (refuser) Name() string { return "users" }
func (refuser) OnRcpt(_ context.Context, _ *pipeline.Txn, r *pipeline.Recipient) (pipeline.Verdict, error) {
	if r.Local == "unknown" {
		return pipeline.RejectVerdict(550, pipeline.EnhancedCode{5, 1, 1}, "No such user"), nil
	}
	return pipeline.Verdict{}, nil
}

func deferChain(t *testing.T, opts map[string]any) (*pipeline.Chain, *callLog) {
	t.Helper()
	st, err := New("limits", opts)
	if err != nil {
		t.Fatal(err)
	}
	log := &callLog{next: rl.NewMemory()}
	s := st.(*Stage)
	if err := s.Provision(&pipeline.Env{RateLimits: &pipeline.RateLimits{Memory: log}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	c, err := pipeline.Compile([]pipeline.Stage{s, refuser{}}, pipeline.ChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return c, log
}

// message runs MAIL FROM and one RCPT TO per address on c, as the relay
// does (an accepted recipient joins txn.Recipients), and returns each
// RCPT's error.
func message(t *testing.T, c *pipeline.Chain, from string, to ...string) []error {
	t.Helper()
	conn := &pipeline.Conn{RemoteIP: netip.MustParseAddr("192.0.2.1"), RelayNetwork: true}
	txn := &pipeline.Txn{Conn: conn, Sender: from}
	if err := c.Mail(context.Background(), txn); err != nil {
		t.Fatalf("MAIL FROM %s: %v", from, err)
	}
	errs := make([]error, len(to))
	for i, a := range to {
		r, err := pipeline.NewRecipient(a)
		if err != nil {
			t.Fatal(err)
		}
		if errs[i] = c.Rcpt(context.Background(), txn, r); errs[i] == nil {
			txn.Recipients = append(txn.Recipients, r)
		}
	}
	return errs
}

func join(calls [][]string) string {
	var b []string
	for _, c := range calls {
		b = append(b, strings.Join(c, "+"))
	}
	return strings.Join(b, " | ")
}

// TestMailLimitsRideWithFirstRcpt: a stage with limits at MAIL FROM and
// at RCPT TO makes one store call for a one-recipient message, with
// every limit in it; the message limits are charged once per message
// (with the first recipient that passes this stage, even when a later
// stage refuses it), and a message refused by a message limit at RCPT
// charges none of its recipient limits.
func TestMailLimitsRideWithFirstRcpt(t *testing.T) {
	c, log := deferChain(t, map[string]any{"limits": []any{
		map[string]any{"key": "client_ip", "rate": "100/hour"},
		map[string]any{"key": "sender_domain", "rate": "3/hour"},
		map[string]any{"key": "recipient_domain", "rate": "100/hour", "count": "recipients"},
	}})
	if errs := message(t, c, "a@origin.example", "b@dest.example"); errs[0] != nil {
		t.Fatal(errs[0])
	}
	if got, want := join(log.take()), "client_ip+sender_domain+recipient_domain_recipients"; got != want {
		t.Fatalf("store calls for a one-recipient message: %q, want one call %q", got, want)
	}

	// Three recipients, the first refused by the later stage: the message
	// limits go with the first call only (charged then), never again.
	errs := message(t, c, "a@origin.example", "unknown@dest.example", "c@dest.example", "d@dest.example")
	if errs[0] == nil || errs[1] != nil || errs[2] != nil {
		t.Fatalf("RCPT errors %v, want only the first refused (by the users stage)", errs)
	}
	if got, want := join(log.take()), "client_ip+sender_domain+recipient_domain_recipients | recipient_domain_recipients | recipient_domain_recipients"; got != want {
		t.Fatalf("store calls: %q, want %q", got, want)
	}

	// sender_domain (3/hour) has been charged twice: one more message
	// passes, the next is refused at each RCPT TO, and what it was
	// refused for charges nothing else.
	if errs := message(t, c, "a@origin.example", "e@dest.example"); errs[0] != nil {
		t.Fatalf("third message: %v", errs[0])
	}
	errs = message(t, c, "x@origin.example", "f@dest.example", "g@dest.example")
	for i, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "Rate limit sender_domain exceeded") {
			t.Fatalf("fourth message, RCPT %d: %v, want 450 4.7.1 Rate limit sender_domain exceeded", i+1, err)
		}
	}
	log.take()
	// recipient_domain_recipients has been charged 1 + 3 + 1 = 5 times
	// (the recipient the users stage refused used its allowance, as
	// docs/ratelimit.md says; the fourth message's two none): 94 left
	// after one more. client_ip: 3 messages charged, 96 left after one
	// more.
	res := make([]pipeline.RateResult, 2)
	key := func(limit string) string {
		for _, l := range c.Stages()[0].(*Stage).opts.limits {
			if l.name == limit {
				return l.prefix
			}
		}
		t.Fatalf("no limit %s", limit)
		return ""
	}
	r100 := pipeline.Rate{Limit: 100, Period: 3600e9}
	if err := log.next.Check(context.Background(), []pipeline.RateCheck{
		{Key: key("recipient_domain_recipients") + "dest.example", Rate: r100, N: 1},
		{Key: key("client_ip") + "192.0.2.1", Rate: r100, N: 1},
	}, res); err != nil {
		t.Fatal(err)
	}
	if res[0].Remaining != 94 || res[1].Remaining != 96 {
		t.Fatalf("remaining after one more: recipients %d (want 94), client_ip %d (want 96)", res[0].Remaining, res[1].Remaining)
	}
}

// TestMailLimitsAloneAtMail: with no RCPT TO limit, the message limits
// are still checked (and refused) at MAIL FROM.
func TestMailLimitsAloneAtMail(t *testing.T) {
	c, log := deferChain(t, map[string]any{"key": "sender_domain", "rate": "1/hour"})
	if errs := message(t, c, "a@origin.example", "b@dest.example", "c@dest.example"); errs[0] != nil || errs[1] != nil {
		t.Fatal(errs)
	}
	if got := join(log.take()); got != "sender_domain" {
		t.Fatalf("store calls %q, want one at MAIL FROM", got)
	}
	conn := &pipeline.Conn{RemoteIP: netip.MustParseAddr("192.0.2.1"), RelayNetwork: true}
	err := c.Mail(context.Background(), &pipeline.Txn{Conn: conn, Sender: "a@origin.example"})
	if err == nil || !strings.Contains(err.Error(), "Rate limit sender_domain exceeded") {
		t.Fatalf("second MAIL FROM: %v, want the limit's refusal", err)
	}
}
