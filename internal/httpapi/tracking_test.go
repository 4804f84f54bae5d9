package httpapi

import (
	"net/http"
	"testing"

	"github.com/sluice-mta/sluice/pipeline"
)

// TestTrackFields: track_opens, track_clicks and list_unsubscribe are
// accepted on /v1/messages and in batch items and reach the transaction
// as the message's tracking request (the fast JSON path and
// encoding/json alike); a non-boolean is a 400 naming the field.
func TestTrackFields(t *testing.T) {
	e := newEnv(t, envOptions{})
	var got []*pipeline.Track
	e.stage.message = func(m *pipeline.Message) pipeline.Verdict {
		got = append(got, m.Track)
		return pipeline.Verdict{}
	}
	for _, body := range []string{
		`{"to":"user@dest.test","from":"system@example.com","subject":"Your Invoice","html":"<h1>Invoice #1234</h1>","track_opens":true}`,
		`{"to":"user@dest.test","from":"system@example.com","subject":"x","html":"<p>x</p>","track_opens":false,"track_clicks":true,"list_unsubscribe":true}`,
		// Fields the fast path leaves to encoding/json (null, a duplicate
		// spelled differently) decode the same.
		"{\"to\":\"user@dest.test\",\"from\":\"system@example.com\",\"subject\":\"\\ud83d\\ude00\",\"html\":\"<p>x</p>\",\"track_clicks\":null}",
	} {
		if r := e.post("/v1/messages", body); r.Status != http.StatusAccepted {
			t.Fatalf("%s: %d %s", body, r.Status, r.Body)
		}
	}
	if len(got) != 3 {
		t.Fatalf("%d messages", len(got))
	}
	if o, c, u := got[0].Resolve(false, false, false); !o || c || u {
		t.Fatalf("first: %+v", got[0])
	}
	if o, c, u := got[1].Resolve(true, false, false); o || !c || !u {
		t.Fatalf("second: %+v", got[1])
	}
	if got[2] != nil {
		t.Fatalf("third (null): %+v, want no tracking request", got[2])
	}
	r := e.post("/v1/messages/batch", `{"messages":[{"to":"a@dest.test","from":"s@example.com","text":"x","track_clicks":true}]}`)
	if r.Status != http.StatusAccepted || len(got) != 4 || got[3] == nil || got[3].Clicks == nil || !*got[3].Clicks {
		t.Fatalf("batch: %d %s %+v", r.Status, r.Body, got)
	}
	r = e.post("/v1/messages", `{"to":"a@dest.test","from":"s@example.com","text":"x","track_opens":"yes"}`)
	if er := r.errorOf(t); r.Status != http.StatusBadRequest || er.Field != "track_opens" {
		t.Fatalf("a string for track_opens: %d %s", r.Status, r.Body)
	}
}

// fakeTracker owns one host.
type fakeTracker struct{ n int }

func (f *fakeTracker) Owns(r *http.Request) bool { return r.Host == "t.acme.test" }
func (f *fakeTracker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.n++
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusNotFound)
}

// TestTrackingHostRouting: requests for a tracking host go to the
// tracker; others are the API's.
func TestTrackingHostRouting(t *testing.T) {
	e := newEnv(t, envOptions{})
	ft := &fakeTracker{}
	e.srv.UseTracking(ft)
	req, _ := http.NewRequest("GET", e.url+"/t/o/x", nil)
	req.Host = "t.acme.test"
	res, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNotFound || ft.n != 1 {
		t.Fatalf("tracking host: %d", res.StatusCode)
	}
	if r := e.do("GET", "/healthz", "", nil); r.Status != 200 || ft.n != 1 {
		t.Fatalf("API host: %d", r.Status)
	}
}
