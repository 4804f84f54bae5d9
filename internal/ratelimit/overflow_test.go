package ratelimit

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

// TestHugeBurst: a burst whose tolerance (burst × period / N) does not
// fit in 64-bit nanoseconds still allows its burst, then refuses, in both
// stores; it neither refuses everything ("1/day" with burst 200,000 wrapped
// to a negative tolerance) nor lets more through.
func TestHugeBurst(t *testing.T) {
	r := pipeline.Rate{Limit: 1, Period: 24 * time.Hour, Burst: 200_000}
	huge := pipeline.Rate{Limit: 1, Period: 24 * time.Hour, Burst: MaxLimit}
	m, _ := testMemory()
	s, _, _ := redisStore(t)
	for name, st := range map[string]pipeline.RateStore{"memory": m, "redis": s} {
		for _, rate := range []pipeline.Rate{r, huge} {
			if res := check1(t, st, "hb", rate, 1); !res.Allowed {
				t.Errorf("%s %+v: first event refused: %+v", name, rate, res)
			}
			if res := check1(t, st, "hb", rate, 3); !res.Allowed {
				t.Errorf("%s %+v: 3 more refused: %+v", name, rate, res)
			}
		}
		// A cost larger than a (saturated) burst is never allowed, and
		// the multiplication does not wrap around into "allowed".
		long := pipeline.Rate{Limit: 1, Period: maxPeriod, Burst: 1}
		if res := check1(t, st, "hb-long", long, MaxLimit); res.Allowed || res.RetryAfter != -1 {
			t.Errorf("%s: cost %d over burst 1: %+v, want never", name, MaxLimit, res)
		}
		if res := check1(t, st, "hb-long", long, 1); !res.Allowed {
			t.Errorf("%s: 1/%s refused its first event: %+v", name, maxPeriod, res)
		}
		if res := check1(t, st, "hb-long", long, 1); res.Allowed {
			t.Errorf("%s: 1/%s allowed a second event", name, maxPeriod)
		}
	}
}

// TestParseRateBounds: a period longer than maxPeriod is refused.
func TestParseRateBounds(t *testing.T) {
	if _, err := ParseRate("1/1000000h"); err == nil {
		t.Error("1/1000000h accepted")
	}
	if _, err := ParseRate("1/8760h"); err != nil {
		t.Errorf("1/8760h: %v", err)
	}
}

// TestMemoryBounded: distinct keys still within their period (a 1/day
// limit) stop growing the store at its bound; the key being checked is
// never the one evicted, and evictions are counted.
func TestMemoryBounded(t *testing.T) {
	m := NewMemoryMax(640)
	r, err := ParseRate("1/day")
	if err != nil {
		t.Fatal(err)
	}
	out := make([]pipeline.RateResult, 1)
	for i := range 20_000 {
		key := "k" + strconv.Itoa(i)
		if err := m.Check(context.Background(), []pipeline.RateCheck{{Key: key, Rate: r}}, out); err != nil || !out[0].Allowed {
			t.Fatalf("key %d: first use refused (%v, %+v)", i, err, out[0])
		}
		// the key just charged is still held: a second use is refused
		if err := m.Check(context.Background(), []pipeline.RateCheck{{Key: key, Rate: r}}, out); err != nil || out[0].Allowed {
			t.Fatalf("key %d: second use allowed right after the first", i)
		}
	}
	if n := m.Len(); n > 640+shards {
		t.Errorf("store holds %d keys, bound 640", n)
	}
	if m.Evicted() == 0 {
		t.Error("no eviction counted")
	}
}
