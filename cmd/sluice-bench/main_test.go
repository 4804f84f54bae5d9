package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/internal/loadgen"
)

type session struct{ dataErr error }

func (s *session) Reset()                               {}
func (s *session) Logout() error                        { return nil }
func (s *session) Mail(string, *smtp.MailOptions) error { return nil }
func (s *session) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *session) Data(r io.Reader) error {
	_, _ = io.Copy(io.Discard, r)
	return s.dataErr
}

// startServer runs a go-smtp server answering dataErr (nil = 250) to every DATA.
func startServer(t *testing.T, dataErr error) string {
	t.Helper()
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		return &session{dataErr: dataErr}, nil
	}))
	srv.ErrorLog = log.New(io.Discard, "", 0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func TestExitCodeOnTempFail(t *testing.T) {
	addr := startServer(t, &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "later"})
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"smtp", "-target", addr, "-sink", "127.0.0.1:0",
		"-n", "30", "-c", "3", "-size", "1024", "-json"}, &out, &errb)
	if code != 1 {
		t.Fatalf("exit %d, want 1; stderr %s", code, errb.String())
	}
	var rep loadgen.Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("json: %v: %s", err, out.String())
	}
	if rep.Errors["EOM 451"] != 30 || rep.Accepted != 0 || rep.OK {
		t.Fatalf("report %+v", rep)
	}
	if !strings.Contains(errb.String(), "30 of 30 messages not accepted") {
		t.Fatalf("stderr %q", errb.String())
	}
}

func TestExitCodeOK(t *testing.T) {
	addr := startServer(t, nil)
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"smtp", "-target", addr, "-sink", "",
		"-n", "40", "-c", "4", "-size", "512"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d; stderr %s", code, errb.String())
	}
	for _, want := range []string{"accepted     40/40", "end-to-end   not measured", "errors       none", "p99"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"smtp", "-h"}, {"http", "-h"}, {"sink", "-h"}} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), args, &out, &errb); code != 0 {
			t.Errorf("%q: exit %d, want 0", args, code)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{nil, {"bogus"}, {"smtp", "-n", "x"}, {"smtp", "-n", "0", "-sink", ""},
		{"http", "-batch", "-1", "-sink", ""}, {"http", "-rate", "-5", "-sink", ""}, {"http", "-rate", "fast"}, {"smtp", "extra"}, {"sink", "-listen", "256.0.0.1:1"}} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), args, &out, &errb); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
}

// TestHTTPRate: -rate runs open-loop and says so in both report forms.
func TestHTTPRate(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	args := []string{"http", "-target", srv.URL, "-key", "k", "-sink", "", "-n", "30", "-c", "3", "-size", "100", "-rate", "500"}
	var out, errb bytes.Buffer
	if code := run(context.Background(), append(args, "-json"), &out, &errb); code != 0 {
		t.Fatalf("exit %d; stderr %s", code, errb.String())
	}
	var rep loadgen.Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("json: %v: %s", err, out.String())
	}
	if rep.Rate != 500 || rep.Accepted != 30 || rep.Latency.Count != 30 || rep.Latency.P999 < rep.Latency.P99 ||
		rep.SendLag == nil || rep.SendLag.Count != 30 {
		t.Fatalf("report %+v", rep)
	}
	out.Reset()
	if code := run(context.Background(), args, &out, &errb); code != 0 {
		t.Fatalf("exit %d; stderr %s", code, errb.String())
	}
	for _, want := range []string{"open-loop rate=500 req/s", "p99.9", "from its scheduled send time", "offered 500 req/s", "send lag"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("output lacks %q:\n%s", want, out.String())
		}
	}
}
