package tracking

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// TestUnsubscribeConcurrent: providers retry one-click POSTs and people
// press the page's button twice; however many arrive at once, the
// recipient is suppressed once, with one suppression_added and one
// unsubscribed event ("an address already listed is answered 200 with no
// new event").
func TestUnsubscribeConcurrent(t *testing.T) {
	e := newEnv(t, Options{})
	e.sp.SetSuppressionPolicy(spool.SuppressionPolicy{Enabled: true})
	form := url.Values{"List-Unsubscribe": {"One-Click"}}.Encode()
	const rounds, n = 50, 16
	for r := range rounds {
		l := sample
		l.Kind, l.Recipient = KindUnsubscribe, fmt.Sprintf("r%d@example.org", r)
		e.concurrentPOSTs("/t/u/"+e.tr.opts.Load().Keys.Sign(&l), form, n)
	}
	count := map[string]int{}
	for _, ev := range e.events() {
		count[ev.Type]++
	}
	if count[pipeline.EventUnsubscribed] != rounds || count[pipeline.EventSuppressionAdded] != rounds {
		t.Fatalf("events %v, want %d unsubscribed and %d suppression_added", count, rounds, rounds)
	}
}

// concurrentPOSTs sends n one-click POSTs of form to p at once; each
// must be answered 200.
func (e *env) concurrentPOSTs(p, form string, n int) {
	t := e.t
	var start, done sync.WaitGroup
	start.Add(1)
	codes := make([]int, n)
	for i := range n {
		done.Add(1)
		go func() {
			defer done.Done()
			req, _ := http.NewRequest("POST", e.srv.URL+p, strings.NewReader(form))
			req.Host = "t.acme.test"
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			start.Wait()
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			codes[i] = resp.StatusCode
		}()
	}
	start.Done()
	done.Wait()
	for i, c := range codes {
		if c != http.StatusOK {
			t.Fatalf("POST %d: %d", i, c)
		}
	}
}
