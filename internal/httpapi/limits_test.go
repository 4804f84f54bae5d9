package httpapi

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/testutil"
)

// hostileBatch is n empty messages: {"messages":[{},{},...]}, the body
// that once took 6.5 GB and 20.8 s to refuse (n = 10,000,000 is 28.6 MiB).
func hostileBatch(n int, first string) []byte {
	var b bytes.Buffer
	b.Grow(3*n + 20)
	b.WriteString(`{"messages":[`)
	b.WriteString(first)
	for i := 0; i < n; i++ {
		if i > 0 || first != "" {
			b.WriteByte(',')
		}
		b.WriteString("{}")
	}
	b.WriteString("]}")
	return b.Bytes()
}

func TestCheckBodyRefusesEarly(t *testing.T) {
	msg := func(extra string) string { return `{"from":"a@example.com","to":"b@dest.test"` + extra + `}` }
	list := func(n int, item string) string {
		return "[" + strings.TrimSuffix(strings.Repeat(item+",", n), ",") + "]"
	}
	obj := func(n int, val string) string {
		var parts []string
		for i := 0; i < n; i++ {
			parts = append(parts, `"X-K`+itoa(i)+`":`+val)
		}
		return "{" + strings.Join(parts, ",") + "}"
	}
	for _, c := range []struct {
		name, body string
		batch      bool
		code       string
		field      string
		msg        string
	}{
		{"501 messages", `{"messages":` + list(501, "{}") + `}`, true, codeInvalidField, "messages", "at most 500 messages per batch"},
		{"501 messages, the first not plain", `{"messages":[null,` + strings.Repeat("{},", 499) + `{}]}`, true, codeInvalidField, "messages", "at most 500"},
		{"501 messages, case-folded name", `{"MESSAGES":` + list(501, "{}") + `}`, true, codeInvalidField, "messages", "at most 500"},
		{"1001 to", msg(`,"cc":` + list(1001, `""`)), false, codeInvalidField, "cc", "at most 1000 recipients"},
		{"33 tags in a batch item", `{"messages":[{},` + msg(`,"tags":`+list(33, `"t"`)) + `]}`, true, codeInvalidField, "messages[1].tags", "at most 32 tags"},
		{"51 headers", msg(`,"headers":` + obj(51, `"v"`)), false, codeInvalidField, "headers", "at most 50 custom headers"},
		{"65 metadata", msg(`,"metadata":` + obj(65, `"v"`)), false, codeInvalidField, "metadata", "at most 64 metadata keys"},
		{"101 attachments", msg(`,"attachments":` + list(101, `{}`)), false, codeInvalidField, "attachments", "at most 100 attachments"},
		{"long subject", msg(`,"subject":"` + strings.Repeat("s", 901) + `"`), false, codeInvalidField, "subject", "subject has at most 900 bytes"},
		{"long subject, escaped", msg(`,"subject":"` + strings.Repeat(`\u00e9`, 451) + `"`), false, codeInvalidField, "subject", "at most 900"},
		{"long header value", `{"messages":[` + msg(`,"headers":{"X-A":"`+strings.Repeat("v", 901)+`"}`) + `]}`, true, codeInvalidField, "messages[0].headers.X-A", "a header value has at most 900 bytes"},
		{"long tag", msg(`,"tags":["a","` + strings.Repeat("t", 129) + `"]`), false, codeInvalidField, "tags[1]", "a tag has 1 to 128 bytes"},
		{"long filename", msg(`,"attachments":[{},{"filename":"` + strings.Repeat("f", 256) + `"}]`), false, codeInvalidField, "attachments[1].filename", "a filename has at most 255 bytes"},
		{"long to", msg(`,"bcc":"` + strings.Repeat("t", 901) + `"`), false, codeInvalidField, "bcc[0]", "bcc[0] is longer than 900 bytes"},
		{"invalid UTF-8 in text", msg(`,"text":"ok ` + "\xff" + `"`), false, codeInvalidField, "text", "text is not valid UTF-8"},
		{"invalid UTF-8 in a batch header", `{"messages":[{},` + msg(`,"headers":{"X-A":"`+"\xc3\x28"+`"}`) + `]}`, true, codeInvalidField, "messages[1].headers.X-A", "messages[1].headers.X-A is not valid UTF-8"},
		{"invalid UTF-8 in a tag", msg(`,"tags":["a","` + "\xed\xa0\x80" + `"]`), false, codeInvalidField, "tags[1]", "not valid UTF-8"},
		{"lone surrogate", msg(`,"subject":"\ud83d x"`), false, codeInvalidField, "subject", "lone surrogate"},
		{"invalid UTF-8 in a name", msg(`,"` + "\xff" + `":1`), false, codeInvalidJSON, "", "a field name is not valid UTF-8"},
		{"deep nesting", msg(`,"text":` + strings.Repeat("[", 100)), false, codeInvalidJSON, "", "nests deeper"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var v any = new(messageRequest)
			if c.batch {
				v = new(batchRequest)
			}
			e := decodeJSON([]byte(c.body), v)
			if e == nil || e.Status != 400 || e.Code != c.code || e.Field != c.field || !strings.Contains(e.Message, c.msg) {
				t.Fatalf("got %+v, want 400 %s field %q %q", e, c.code, c.field, c.msg)
			}
		})
	}
	// Within the limits, nothing is refused: a surrogate pair, 500
	// messages, 32 tags, 1000 recipients.
	for _, body := range []string{
		msg(`,"subject":"\ud83d\ude00","tags":` + list(32, `"t"`) + `,"cc":` + list(1000, `"c@d.test"`)),
		`{"messages":` + list(500, "{}") + `}`,
	} {
		if e := checkBody([]byte(body), new(batchRequest)); e != nil {
			t.Errorf("refused: %v", e)
		}
		if e := checkBody([]byte(body), new(messageRequest)); e != nil {
			t.Errorf("refused: %v", e)
		}
	}
}

// The hostile batch is refused from a bounded look at it: its decoding
// allocates almost nothing beyond the 500 messages it looked at.
func TestHostileBatchMemory(t *testing.T) {
	for _, first := range []string{"", "null", `{"x":1}`} {
		body := hostileBatch(2_000_000, first)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		e := decodeJSON(body, new(batchRequest))
		runtime.ReadMemStats(&after)
		if e == nil || e.Field != "messages" {
			t.Fatalf("first %q: %v", first, e)
		}
		if d := after.TotalAlloc - before.TotalAlloc; d > 64<<10 {
			t.Errorf("first %q: refusing a %d-byte batch allocated %d bytes", first, len(body), d)
		}
	}
}

func TestBatchTooManyOverHTTP(t *testing.T) {
	e := newEnv(t, envOptions{})
	r := e.post("/v1/messages/batch", hostileBatch(1_000_000, ""))
	if r.Status != 400 {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	if ae := r.errorOf(t); ae.Field != "messages" || ae.Code != codeInvalidField {
		t.Errorf("%+v", ae)
	}
	r = e.post("/v1/messages", `{"from":"a@example.com","to":"b@dest.test","text":"`+"caf\xe9"+`"}`)
	if r.Status != 400 {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	if ae := r.errorOf(t); ae.Field != "text" || ae.Message != "text is not valid UTF-8" {
		t.Errorf("%+v", ae)
	}
	r = e.post("/v1/messages/raw", `{"from":"a@example.com","to":"b@dest.test","message":"Subject: x\n\n`+"caf\xe9"+`\n"}`)
	if r.Status != 400 {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	if ae := r.errorOf(t); ae.Field != "message" {
		t.Errorf("%+v", ae)
	}
}

// A body sent at a trickle is cut off after request_timeout with a 408,
// and the connection is closed.
func TestSlowBodyCutOff(t *testing.T) {
	const timeout = 500 * time.Millisecond
	e := newEnv(t, envOptions{listener: config.HTTPListener{RequestTimeout: timeout}})
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	fmt.Fprintf(conn, "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{", e.sendKey)
	stop := make(chan struct{})
	defer close(stop)
	go func() { // one byte every 50 ms, for up to 50 s
		for i := 0; i < 1000; i++ {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if _, err := conn.Write([]byte(" ")); err != nil {
				return
			}
		}
	}()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("after %s: %v", time.Since(start), err)
	}
	body, _ := io.ReadAll(res.Body)
	took := time.Since(start)
	if res.StatusCode != http.StatusRequestTimeout || !bytes.Contains(body, []byte(codeRequestTimeout)) {
		t.Errorf("%d %s", res.StatusCode, body)
	}
	// The server's clock starts when it accepts, a little before start.
	if took < timeout-100*time.Millisecond || took > timeout+2*time.Second {
		t.Errorf("answered after %s, request_timeout %s", took, timeout)
	}
	// The server closed the connection: reading more ends.
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Error("the connection is still open")
	}
}

// BenchmarkHostileBatch posts the 28.6 MiB batch of ten million empty
// messages that once held 6.5 GB for 20.8 s. It reports the peak resident
// memory of the whole test process (VmHWM: the body built by the client
// included) besides -benchmem's allocation per request, client included.
//
//	go test -run '^$' -bench HostileBatch -benchmem ./internal/httpapi/
func BenchmarkHostileBatch(b *testing.B) {
	e := newEnv(b, envOptions{quiet: true, noDelivery: true})
	body := hostileBatch(10_000_000, "")
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		req, _ := http.NewRequest("POST", e.url+"/v1/messages/batch", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+e.sendKey)
		res, err := e.client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != 400 {
			b.Fatalf("status %d", res.StatusCode)
		}
	}
	b.StopTimer()
	if hwm := testutil.PeakRSS(); hwm > 0 {
		b.ReportMetric(float64(hwm)/(1<<20), "peak-RSS-MiB")
	}
}

// BenchmarkCheckBody is the cost of the limits walk on the load
// generator's 2 KB message, beside the fast decoder's on the same body.
func BenchmarkCheckBody(b *testing.B) {
	body := benchBody(b)
	b.Run("walk", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		for i := 0; i < b.N; i++ {
			if e := checkBody(body, (*messageRequest)(nil)); e != nil {
				b.Fatal(e)
			}
		}
	})
	b.Run("fastDecode", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		for i := 0; i < b.N; i++ {
			var m messageRequest
			if !fastDecode(body, &m) {
				b.Fatal("slow path")
			}
		}
	})
}

// TestInflightBodyBudget: a request whose body is being read holds its
// share of max_inflight_bytes; another request past the budget gets 503
// with Retry-After before its body is read, and once the first ends the
// budget is free again.
func TestInflightBodyBudget(t *testing.T) {
	e := newEnv(t, envOptions{listener: config.HTTPListener{MaxInflightBytes: 20000}})
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// 2 × 9000 + 4096 > 20000: this one request takes the whole budget
	// while its body trickles in.
	fmt.Fprintf(conn, "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 9000\r\n\r\n{", e.sendKey)
	msg := map[string]any{"from": "app@example.com", "to": "b@dest.test", "subject": "s", "text": "x"}
	testutil.WaitFor(t, "a second request refused with 503", func() bool {
		r := e.post("/v1/messages", msg)
		if r.Status == http.StatusAccepted {
			return false // the first request's body was not being read yet
		}
		if r.Status != http.StatusServiceUnavailable || r.Header.Get("Retry-After") == "" || r.errorOf(t).Code != codeUnavailable {
			t.Fatalf("past the budget: %d %s (Retry-After %q)", r.Status, r.Body, r.Header.Get("Retry-After"))
		}
		return true
	})
	conn.Close() // the first request ends: its reservation is released
	testutil.WaitFor(t, "accepted once the budget is free", func() bool {
		return e.post("/v1/messages", msg).Status == http.StatusAccepted
	})
}
