package main

// End-to-end harness: builds the real sluice binary once, runs it against
// real SMTP sinks (go-smtp servers on loopback), a DNS server on loopback
// (dnstest, miekg/dns) and a config written per test.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/smtp"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sluice-e2e-")
	if err != nil {
		panic(err)
	}
	binPath = filepath.Join(dir, "sluice")
	out, err := exec.Command("go", "build", "-race", "-o", binPath, ".").CombinedOutput()
	if err != nil {
		// -race needs cgo; fall back to a plain build.
		out, err = exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "building sluice: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// ---- sink -------------------------------------------------------------

type sinkMsg struct {
	From  string
	Rcpts []string
	Data  []byte
}

// sink is an SMTP server that records what it receives. rcptReply and
// dataReply let a test script per-recipient and per-message answers.
type sink struct {
	t     testing.TB
	srv   *gosmtp.Server
	addr  string
	mu    sync.Mutex
	msgs  []sinkMsg
	conns int
	// rcptReply returns an error for a recipient (nil = 250).
	rcptReply func(rcpt string) error
	// dataReply returns an error for a whole message (nil = 250).
	dataReply func(m *sinkMsg) error
}

func newSink(t testing.TB) *sink {
	s := &sink{t: t}
	be := gosmtp.BackendFunc(func(c *gosmtp.Conn) (gosmtp.Session, error) {
		s.mu.Lock()
		s.conns++
		s.mu.Unlock()
		return &sinkSession{s: s}, nil
	})
	s.srv = gosmtp.NewServer(be)
	s.srv.Domain = "sink.test"
	s.srv.AllowInsecureAuth = true
	s.srv.ErrorLog = discardLog{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = ln.Addr().String()
	go s.srv.Serve(ln)
	t.Cleanup(func() { s.srv.Close() })
	return s
}

type discardLog struct{}

func (discardLog) Printf(string, ...any) {}
func (discardLog) Println(...any)        {}

func (s *sink) port() string { _, p, _ := net.SplitHostPort(s.addr); return p }

func (s *sink) messages() []sinkMsg {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sinkMsg(nil), s.msgs...)
}

func (s *sink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.msgs)
}

type sinkSession struct {
	s   *sink
	cur sinkMsg
}

func (ss *sinkSession) Reset()        { ss.cur = sinkMsg{} }
func (ss *sinkSession) Logout() error { return nil }
func (ss *sinkSession) Mail(from string, _ *gosmtp.MailOptions) error {
	ss.cur = sinkMsg{From: from}
	return nil
}
func (ss *sinkSession) Rcpt(to string, _ *gosmtp.RcptOptions) error {
	ss.s.mu.Lock()
	f := ss.s.rcptReply
	ss.s.mu.Unlock()
	if f != nil {
		if err := f(to); err != nil {
			return err
		}
	}
	ss.cur.Rcpts = append(ss.cur.Rcpts, to)
	return nil
}
func (ss *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	m := ss.cur
	m.Data = b
	ss.s.mu.Lock()
	f := ss.s.dataReply
	ss.s.mu.Unlock()
	if f != nil {
		if err := f(&m); err != nil {
			return err
		}
	}
	ss.s.mu.Lock()
	ss.s.msgs = append(ss.s.msgs, m)
	ss.s.mu.Unlock()
	return nil
}

func smtpErr(code int, enh [3]int, text string) error {
	return &gosmtp.SMTPError{Code: code, EnhancedCode: gosmtp.EnhancedCode(enh), Message: text}
}

// ---- the relay process ------------------------------------------------

type relayProc struct {
	t      testing.TB
	dir    string
	cfg    string
	cmd    *exec.Cmd
	logs   *bytes.Buffer
	logMu  *sync.Mutex
	smtp   string
	events string
}

var (
	portsMu sync.Mutex
	ports   = map[string]bool{}
)

// freePort returns a loopback address nothing listens on, never the same
// one twice in this test process (the kernel may hand a just-closed port
// out again, and a config with two listeners on one port fails).
func freePort(t testing.TB) string {
	portsMu.Lock()
	defer portsMu.Unlock()
	for i := 0; i < 100; i++ {
		addr := testutil.FreeAddr(t)
		if !ports[addr] {
			ports[addr] = true
			return addr
		}
	}
	t.Fatal("no unused loopback port")
	return ""
}

// writeConfig writes a config into dir. {{SMTP}}, {{SPOOL}}, {{EVENTS}} are
// substituted.
func newRelay(t testing.TB, dir, cfgBody string) *relayProc {
	t.Helper()
	r := &relayProc{t: t, dir: dir, smtp: freePort(t), events: filepath.Join(dir, "events.jsonl"), logMu: &sync.Mutex{}}
	body := strings.NewReplacer("{{SMTP}}", r.smtp, "{{SPOOL}}", filepath.Join(dir, "spool"), "{{EVENTS}}", r.events).Replace(cfgBody)
	r.cfg = filepath.Join(dir, "pipeline.lua")
	if err := os.WriteFile(r.cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return r
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (r *relayProc) start() {
	r.t.Helper()
	r.logs = &bytes.Buffer{}
	r.cmd = exec.Command(binPath, "serve", "-c", r.cfg, "-log-level", "debug")
	r.cmd.Stdout = lockedWriter{r.logMu, r.logs}
	r.cmd.Stderr = lockedWriter{r.logMu, r.logs}
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	cmd := r.cmd
	r.t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
			}
		}
		if r.t.Failed() {
			r.t.Logf("sluice logs:\n%s", r.logText())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", r.smtp, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("sluice did not listen on %s; logs:\n%s", r.smtp, r.logText())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *relayProc) logText() string {
	r.logMu.Lock()
	defer r.logMu.Unlock()
	return r.logs.String()
}

func (r *relayProc) kill9() {
	r.cmd.Process.Signal(syscall.SIGKILL)
	r.cmd.Wait()
}

func (r *relayProc) stop() {
	r.cmd.Process.Signal(syscall.SIGTERM)
	r.cmd.Wait()
}

// readEvents reads the JSONL events file and validates each event against
// docs/event.schema.json (a mismatch fails the test).
func (r *relayProc) readEvents() []pipeline.Event {
	f, err := os.Open(r.events)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []pipeline.Event
	br := bufio.NewReaderSize(f, 1<<20)
	for {
		line, err := br.ReadBytes('\n')
		if err != nil {
			// A last line without its newline is still being written
			// by the relay: the next read gets it whole.
			break
		}
		var ev pipeline.Event
		if err := json.Unmarshal(line, &ev); err != nil {
			r.t.Fatalf("bad event line %q: %v", line, err)
		}
		// Every event any e2e test reads is checked against the
		// published schema.
		if err := testutil.CheckEvent(line); err != nil {
			r.t.Fatalf("event does not match docs/event.schema.json: %v\nevent: %s", err, line)
		}
		out = append(out, ev)
	}
	return out
}

func (r *relayProc) waitEvents(what string, cond func([]pipeline.Event) bool) []pipeline.Event {
	r.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		evs := r.readEvents()
		if cond(evs) {
			return evs
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("timed out waiting for %s; events:\n%s", what, describeEvents(evs))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func describeEvents(evs []pipeline.Event) string {
	var sb strings.Builder
	for _, e := range evs {
		resp := ""
		if e.Response != nil {
			resp = fmt.Sprintf("%d %s %s", e.Response.Code, e.Response.Enhanced, e.Response.Text)
		}
		fmt.Fprintf(&sb, "  %s %s %s att=%d q=%s %s\n", e.Type, e.MessageID, e.Recipient, e.Attempt, e.Queue, resp)
	}
	return sb.String()
}

func countType(evs []pipeline.Event, typ, rcpt string) int {
	n := 0
	for _, e := range evs {
		if e.Type == typ && (rcpt == "" || e.Recipient == rcpt) {
			n++
		}
	}
	return n
}

// waitFor polls cond with the end-to-end tests' deadline (a race-built
// binary on a busy 2-core machine can be slow).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testutil.WaitForWithin(t, 30*time.Second, what, cond)
}

// ---- client -------------------------------------------------------------

// sendMail sends one message with net/smtp and returns the error.
func sendMail(addr, from string, to []string, data string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		return err
	}
	if err := c.Mail(from); err != nil {
		return err
	}
	for _, r := range to {
		if err := c.Rcpt(r); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, data); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

// rawSession is a line-level SMTP client for inputs net/smtp refuses to
// send (smuggling sequences, bare LFs).
type rawSession struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t testing.TB, addr string) *rawSession {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s := &rawSession{t: t, c: c, br: bufio.NewReader(c)}
	t.Cleanup(func() { c.Close() })
	s.reply() // greeting
	return s
}

// reply reads one (possibly multi-line) reply and returns its last line.
func (s *rawSession) reply() string {
	s.t.Helper()
	s.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		line, err := s.br.ReadString('\n')
		if err != nil {
			s.t.Fatalf("reading reply: %v (so far %q)", err, line)
		}
		if len(line) < 4 || line[3] != '-' {
			return strings.TrimRight(line, "\r\n")
		}
	}
}

func (s *rawSession) cmd(line string) string {
	s.t.Helper()
	if _, err := io.WriteString(s.c, line+"\r\n"); err != nil {
		s.t.Fatal(err)
	}
	return s.reply()
}

func (s *rawSession) send(raw string) {
	s.t.Helper()
	if _, err := io.WriteString(s.c, raw); err != nil {
		s.t.Fatal(err)
	}
}
