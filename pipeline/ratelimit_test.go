package pipeline

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// TestRetryAfterCarried: a tempfail's RetryAfter reaches the *Error and
// survives Reply and wrapping; other actions carry none.
func TestRetryAfterCarried(t *testing.T) {
	v := TempfailVerdict(450, EnhancedCode{4, 7, 1}, "slow down")
	v.RetryAfter = 1500 * time.Millisecond
	e := v.Err("limits")
	if e.RetryAfter != 1500*time.Millisecond || e.Code != 450 {
		t.Fatalf("Err: %+v", e)
	}
	r := Reply(fmt.Errorf("wrapped: %w", e))
	if r.RetryAfter != 1500*time.Millisecond || r.Message != "slow down" {
		t.Fatalf("Reply: %+v", r)
	}
	if r := Reply(errors.New("internal")); r.RetryAfter != 0 {
		t.Fatalf("generic error got a retry-after: %+v", r)
	}
	if (Rate{Limit: 5}).EffectiveBurst() != 5 || (Rate{Limit: 5, Burst: 2}).EffectiveBurst() != 2 {
		t.Fatal("EffectiveBurst")
	}
}
