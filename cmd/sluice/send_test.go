package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// apiStub stands in for the HTTP API: it checks what sluice send posts.
type apiStub struct {
	t      *testing.T
	status int
	got    map[string]any
	hdr    http.Header
}

func (a *apiStub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != "POST" || r.URL.Path != "/v1/messages" || r.Header.Get("Content-Type") != "application/json" {
		a.t.Errorf("request %s %s %s", r.Method, r.URL.Path, r.Header.Get("Content-Type"))
	}
	a.hdr = r.Header.Clone()
	b, _ := io.ReadAll(r.Body)
	a.got = nil
	if err := json.Unmarshal(b, &a.got); err != nil {
		a.t.Errorf("body %q: %v", b, err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(a.status)
	if a.status == 202 {
		io.WriteString(w, `{"id":"01J00000000000000000000000","recipients":[{"email":"b@dest.test","status":"queued"}]}`)
	} else {
		io.WriteString(w, `{"error":{"code":"rejected","message":"no","smtp_code":550}}`)
	}
}

func sendCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var o, e bytes.Buffer
	code := runSend(args, &o, &e)
	return code, o.String(), e.String()
}

func TestSendPostsTheMessage(t *testing.T) {
	stub := &apiStub{t: t, status: 202}
	srv := httptest.NewServer(stub)
	defer srv.Close()
	dir := t.TempDir()
	html := filepath.Join(dir, "body.html")
	os.WriteFile(html, []byte("<p>hi</p>"), 0o600)
	att := filepath.Join(dir, "report.pdf")
	os.WriteFile(att, []byte{0, 1, 2, 3}, 0o600)

	code, out, errOut := sendCLI(t, "--url", srv.URL+"/", "--key", "sk_test", "--from", "App <app@example.com>",
		"--to", "b@dest.test", "--to", "c@dest.test", "--bcc", "d@dest.test", "--subject", "Grüße", "--text", "hello",
		"--html-file", html, "--attach", att, "--header", "X-Campaign: spring", "--tag", "t1", "--meta", "order=12",
		"--idempotency-key", "k1")
	if code != 0 {
		t.Fatalf("exit %d: %s %s", code, out, errOut)
	}
	if !strings.Contains(out, `"status": "queued"`) {
		t.Errorf("stdout %q", out)
	}
	g := stub.got
	if g["from"] != "App <app@example.com>" || g["subject"] != "Grüße" || g["text"] != "hello" || g["html"] != "<p>hi</p>" {
		t.Errorf("posted %v", g)
	}
	if to := g["to"].([]any); len(to) != 2 || g["bcc"].([]any)[0] != "d@dest.test" {
		t.Errorf("recipients %v", g)
	}
	a := g["attachments"].([]any)[0].(map[string]any)
	if data, _ := base64.StdEncoding.DecodeString(a["content"].(string)); a["filename"] != "report.pdf" || !bytes.Equal(data, []byte{0, 1, 2, 3}) {
		t.Errorf("attachment %v", a)
	}
	if g["headers"].(map[string]any)["X-Campaign"] != "spring" || g["metadata"].(map[string]any)["order"] != "12" || g["tags"].([]any)[0] != "t1" {
		t.Errorf("headers/meta/tags %v", g)
	}
	if stub.hdr.Get("Authorization") != "Bearer sk_test" || stub.hdr.Get("Idempotency-Key") != "k1" {
		t.Errorf("headers %v", stub.hdr)
	}

	// The key from the environment; a refusal exits 1 with the answer.
	t.Setenv("SLUICE_API_KEY", "sk_env")
	stub.status = 422
	code, out, errOut = sendCLI(t, "--url", srv.URL, "--from", "a@example.com", "--to", "b@dest.test")
	if code != 1 || !strings.Contains(out, "rejected") || !strings.Contains(errOut, "422") || stub.hdr.Get("Authorization") != "Bearer sk_env" {
		t.Fatalf("refused: %d %q %q", code, out, errOut)
	}
}

func TestSendUsageErrors(t *testing.T) {
	t.Setenv("SLUICE_API_KEY", "")
	for _, args := range [][]string{
		{"--from", "a@example.com", "--to", "b@dest.test"},                              // no key
		{"--key", "k", "--to", "b@dest.test"},                                           // no from
		{"--key", "k", "--from", "a@example.com"},                                       // no recipient
		{"--key", "k", "--from", "a@example.com", "--to", "b@x", "--header", "novalue"}, // bad header
		{"--key", "k", "--from", "a@example.com", "--to", "b@x", "--meta", "x"},         // bad meta
		{"--key", "k", "--from", "a@example.com", "--to", "b@x", "stray"},               // positional
		{"--nope"},
	} {
		if code, _, _ := sendCLI(t, args...); code != 2 {
			t.Errorf("send %q: exit %d, want 2", args, code)
		}
	}
	// Nothing listening: a failure, not a usage error.
	if code, _, _ := sendCLI(t, "--url", "http://127.0.0.1:1", "--key", "k", "--from", "a@example.com", "--to", "b@x"); code != 1 {
		t.Errorf("unreachable server: exit %d", code)
	}
}
