package httpapi

import (
	"net/http"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

// TestRetryAfterFromStage: a 429 carries the stage's retry-after in whole
// seconds rounded up, or the default 5 when the stage gave none; a 503
// keeps its own.
func TestRetryAfterFromStage(t *testing.T) {
	for _, c := range []struct {
		v      pipeline.Verdict
		status int
		want   string
	}{
		{pipeline.Verdict{Action: pipeline.Tempfail, Code: 450, RetryAfter: 300 * time.Millisecond}, 429, "1"},
		{pipeline.Verdict{Action: pipeline.Tempfail, Code: 450, RetryAfter: 1800 * time.Second}, 429, "1800"},
		{pipeline.Verdict{Action: pipeline.Tempfail, Code: 450, RetryAfter: 1800*time.Second + time.Millisecond}, 429, "1801"},
		{pipeline.Verdict{Action: pipeline.Tempfail, Code: 451}, 429, "5"},
		{pipeline.Verdict{Action: pipeline.Tempfail, Code: 451, Enhanced: pipeline.EnhancedCode{4, 3, 0}}, http.StatusServiceUnavailable, "5"},
	} {
		e := fromPipeline(c.v.Err("limits"))
		if e.Status != c.status || e.retryAfter() != c.want {
			t.Errorf("%+v: %d Retry-After %q, want %d %q", c.v, e.Status, e.retryAfter(), c.status, c.want)
		}
	}
}
