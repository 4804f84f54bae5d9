package pipeline

import "context"

// Track asks for engagement tracking (docs/tracking.md). Each field is
// tri-state: nil leaves the decision to what was asked before (a stage
// after the request, the request after the tenant's default); a set
// value, true or false, wins over it. So a per-message opt-out
// (false) always beats a tenant default.
type Track struct {
	Opens       *bool `json:"opens,omitempty"`       // a 1x1 image in the HTML part
	Clicks      *bool `json:"clicks,omitempty"`      // links rewritten to the tracking host
	Unsubscribe *bool `json:"unsubscribe,omitempty"` // List-Unsubscribe + List-Unsubscribe-Post (RFC 8058)
}

// Merge returns t with the set fields of u laid over it (t unchanged;
// either may be nil).
func (t *Track) Merge(u *Track) *Track {
	if u == nil {
		return t
	}
	var out Track
	if t != nil {
		out = *t
	}
	if u.Opens != nil {
		out.Opens = u.Opens
	}
	if u.Clicks != nil {
		out.Clicks = u.Clicks
	}
	if u.Unsubscribe != nil {
		out.Unsubscribe = u.Unsubscribe
	}
	return &out
}

// Resolve returns the three decisions: a set field of t, else the
// default given.
func (t *Track) Resolve(opens, clicks, unsubscribe bool) (bool, bool, bool) {
	if t == nil {
		return opens, clicks, unsubscribe
	}
	pick := func(p *bool, d bool) bool {
		if p != nil {
			return *p
		}
		return d
	}
	return pick(t.Opens, opens), pick(t.Clicks, clicks), pick(t.Unsubscribe, unsubscribe)
}

// BodyRewriter rewrites a message's body and header after every
// on_message stage and before the Authentication-Results field and the
// sign hooks (SignHook), so a DKIM signature covers the rewritten body:
// the engagement tracker (internal/tracking) adds its open pixel, signed
// click links and List-Unsubscribe fields there. It is called once per
// accepted, not discarded message, concurrently for different messages.
// An error fails the message like a stage's temporary failure.
type BodyRewriter interface {
	Rewrite(ctx context.Context, msg *Message) error
}
