package ratelimit

import "testing"

// TestRedisKeyExample: the key of the Syntax example's tenant limit is
// the one docs/ratelimit.md gives (after PREFIX and "rl:"), so an
// operator looking for it with redis-cli finds it.
func TestRedisKeyExample(t *testing.T) {
	op, err := parseOptions("limits", map[string]any{"limits": []any{
		map[string]any{"key": "tenant", "rate": "1000/hour", "burst": int64(50), "count": "messages"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := op.limits[0].prefix+"acme", "limits/tenant/1000/1h0m0s/50:acme"; got != want {
		t.Errorf("key %q, docs/ratelimit.md says %q", got, want)
	}
}
