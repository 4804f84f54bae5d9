package tracking

import (
	"bytes"
	"io"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// postUnsubscribe POSTs body with content type ct to the unsubscribe
// link p on the tracking host.
func (e *env) postUnsubscribe(p, ct string, body []byte) int {
	e.t.Helper()
	req, _ := http.NewRequest("POST", e.srv.URL+p, bytes.NewReader(body))
	req.Host = "t.acme.test"
	req.Header.Set("Content-Type", ct)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// TestUnsubscribeMultipart: RFC 8058 section 3.1 says the one-click POST
// SHOULD be multipart/form-data (and MAY be urlencoded); a provider that
// follows the SHOULD must unsubscribe the recipient too.
func TestUnsubscribeMultipart(t *testing.T) {
	e := newEnv(t, Options{})
	e.sp.SetSuppressionPolicy(spool.SuppressionPolicy{Enabled: true})
	p := e.link(KindUnsubscribe, "")

	form := func(fields ...string) (string, []byte) {
		var b bytes.Buffer
		mw := multipart.NewWriter(&b)
		for i := 0; i+1 < len(fields); i += 2 {
			_ = mw.WriteField(fields[i], fields[i+1])
		}
		_ = mw.Close()
		return mw.FormDataContentType(), b.Bytes()
	}
	if ct, b := form("other", "1"); e.postUnsubscribe(p, ct, b) != http.StatusBadRequest {
		t.Fatal("a multipart POST without List-Unsubscribe was accepted")
	}
	if st := e.postUnsubscribe(p, "multipart/form-data; boundary=x", []byte("garbage")); st != http.StatusBadRequest {
		t.Fatalf("a malformed multipart body: %d", st)
	}
	if ct, b := form("big", strings.Repeat("x", 2*maxUnsubscribeBody)); e.postUnsubscribe(p, ct, b) != http.StatusRequestEntityTooLarge {
		t.Fatal("an oversized multipart body was not refused with 413")
	}
	if s, _ := e.sp.Suppressed("acme", sample.Recipient); s != nil {
		t.Fatal("suppressed without a one-click field")
	}
	ct, b := form("List-Unsubscribe", "One-Click")
	if st := e.postUnsubscribe(p, ct, b); st != http.StatusOK {
		t.Fatalf("multipart one-click: %d", st)
	}
	s, err := e.sp.Suppressed("acme", sample.Recipient)
	if err != nil || s == nil || s.Source != spool.SuppressionUnsubscribe {
		t.Fatalf("suppression %+v %v", s, err)
	}
	evs := e.events()
	if len(evs) != 2 || evs[1].Type != pipeline.EventUnsubscribed || evs[1].Engagement.Method != "one-click" {
		t.Fatalf("events %+v", evs)
	}
}
