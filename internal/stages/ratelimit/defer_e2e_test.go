package ratelimit_test

import "testing"

// TestHTTP429Deferred: with a per-recipient limit in the same stage, the
// tenant limit is checked with the recipient (one store call per
// request), and a request over it still gets 429 with Retry-After.
func TestHTTP429Deferred(t *testing.T) {
	n := startNode(t, `sluice.stage("limits", sluice.builtin.ratelimit { limits = {
  { key = "tenant", rate = "2/hour" },
  { key = "recipient_domain", rate = "100/hour", count = "recipients" },
} })`, "", nil)
	third429(t, n)
	// Per limit: the third request's recipient domain check is allowed by
	// its own limit (and not charged: the call is all or nothing).
	if a, r := counter(t, n.srv, "sluice_ratelimit_checks_total", "allowed"), counter(t, n.srv, "sluice_ratelimit_checks_total", "refused"); a != 5 || r != 1 {
		t.Errorf("checks allowed %v, refused %v; want 5 and 1 (3 calls of 2 checks, the last refused by tenant)", a, r)
	}
}
