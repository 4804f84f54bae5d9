package plugin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

var faultyBin, stampBin string

func TestMain(m *testing.M) {
	if os.Getenv("PLUGIN_TEST_HOST") != "" {
		helperHost() // never returns
	}
	dir, err := os.MkdirTemp("", "plugin-test")
	if err != nil {
		panic(err)
	}
	faultyBin = filepath.Join(dir, "faulty")
	out, err := exec.Command("go", "build", "-o", faultyBin, "./testdata/faulty").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building testdata/faulty: %v\n%s", err, out)
		os.Exit(1)
	}
	stampBin = filepath.Join(dir, "stamp")
	if out, err := exec.Command("go", "build", "-o", stampBin, "./testdata/stamp").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building testdata/stamp: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// logBuf is a concurrency-safe log sink.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func start(t *testing.T, mode string, o Options) (*Stage, *logBuf) {
	t.Helper()
	lb := &logBuf{}
	o.Name = "t"
	o.Cmd = faultyBin
	o.Args = []string{mode}
	o.Logger = slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if o.RestartMin == 0 {
		o.RestartMin = 20 * time.Millisecond
	}
	s, err := Start(o)
	if err != nil {
		t.Fatalf("Start(%s): %v\nlog:\n%s", mode, err, lb)
	}
	t.Cleanup(func() { s.Close() })
	return s, lb
}

func message(t *testing.T, subject string) *pipeline.Message {
	t.Helper()
	txn := &pipeline.Txn{Conn: &pipeline.Conn{ID: "c"}, ID: "m1", Sender: "a@x.example"}
	m, err := pipeline.ParseMessage(txn, []byte("Subject: "+subject+"\r\nFrom: a@x.example\r\n\r\nhello body\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func header(v pipeline.Verdict, name string) (string, bool) {
	for _, h := range v.Edits.Headers {
		if h.Name == name {
			return h.Value, true
		}
	}
	return "", false
}

// children lists the live processes whose parent is this test process.
func children(t *testing.T) []int {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	var out []int
	me := strconv.Itoa(os.Getpid())
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) > 1 && f[1] == me && f[0] != "Z" {
			out = append(out, pid)
		}
	}
	return out
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

// waitFor polls cond until it holds, failing after a generous bound (a
// wait for an asynchronous outcome, not a speed assertion).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDescribeConfigAndBody(t *testing.T) {
	for _, tt := range []struct{ body, wantLen, wantSubject string }{
		{"full", strconv.Itoa(len("hello body\r\n")), "HELLO"},
		{"headers", "0", "HELLO"},
		{"envelope", "0", ""},
	} {
		t.Run(tt.body, func(t *testing.T) {
			s, lb := start(t, "ok", Options{Config: map[string]any{"tag": "cfg-" + tt.body, "body": tt.body}, Env: []string{"FAULTY_ENV=env-" + tt.body}})
			if got := s.Hooks(); !slices.Equal(got, []string{"on_rcpt", "on_message"}) {
				t.Fatalf("hooks %v", got)
			}
			if d := s.Describe(); d.Name != "faulty" || d.Version != "0.1" {
				t.Fatalf("describe %v", d)
			}
			v, err := s.OnMessage(context.Background(), message(t, "hello"))
			if err != nil {
				t.Fatalf("OnMessage: %v\n%s", err, lb)
			}
			if got, _ := header(v, "X-Config"); got != "cfg-"+tt.body {
				t.Errorf("X-Config %q", got)
			}
			if got, _ := header(v, "X-Env"); got != "env-"+tt.body {
				t.Errorf("X-Env %q", got)
			}
			if got, _ := header(v, "X-Body-Len"); got != tt.wantLen {
				t.Errorf("X-Body-Len %q, want %q", got, tt.wantLen)
			}
			if got, _ := header(v, "X-Subject-Seen"); got != tt.wantSubject {
				t.Errorf("X-Subject-Seen %q, want %q", got, tt.wantSubject)
			}
			if got, _ := header(v, "X-Plugin-Pid"); got != strconv.Itoa(s.PID()) {
				t.Errorf("X-Plugin-Pid %q, PID() %d", got, s.PID())
			}
			// The plugin's stderr reaches the log, tagged with the stage.
			waitFor(t, "stderr in the log", func() bool { return strings.Contains(lb.String(), "scored message m1") })
			if !strings.Contains(lb.String(), "stage=t") {
				t.Errorf("log lines lack the stage: %s", lb)
			}
		})
	}
}

func TestInChain(t *testing.T) {
	s, _ := start(t, "ok", Options{Config: map[string]any{"tag": "chained"}})
	chain, err := pipeline.Compile([]pipeline.Stage{s}, pipeline.ChainOptions{LocalDomains: []string{"x.example"}})
	if err != nil {
		t.Fatal(err)
	}
	m := message(t, "hi")
	r, _ := pipeline.NewRecipient("reject@x.example")
	err = chain.Rcpt(context.Background(), m.Txn, r)
	var pe *pipeline.Error
	if !errors.As(err, &pe) || pe.Code != 554 || pe.Enhanced != (pipeline.EnhancedCode{5, 7, 9}) || pe.Message != "no thanks" {
		t.Fatalf("Rcpt reject: %v", err)
	}
	if discard, _, err := chain.Message(context.Background(), m); err != nil || discard {
		t.Fatalf("Message: %v %v", discard, err)
	}
	if got := m.Header.Get("X-Config"); got != "chained" {
		t.Fatalf("X-Config in the message: %q", got)
	}
}

func TestStartFailures(t *testing.T) {
	before := children(t)
	for _, tt := range []struct {
		mode string
		opts Options
		want string
	}{
		{"exit", Options{}, "exiting at start"},
		{"garbage", Options{}, "this is not a handshake"},
		{"nohandshake", Options{StartTimeout: 300 * time.Millisecond}, "timeout"},
		{"ok", Options{Config: map[string]any{"fail": true}}, "config says fail"},
		{"ok", Options{Hooks: []string{"on_route"}}, "does not implement on_route"},
	} {
		o := tt.opts
		o.Name, o.Cmd, o.Args = "t", faultyBin, []string{tt.mode}
		o.Logger = slog.New(slog.NewTextHandler(&logBuf{}, nil))
		s, err := Start(o)
		if err == nil {
			s.Close()
			t.Errorf("%s: Start succeeded", tt.mode)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %q lacks %q", tt.mode, err, tt.want)
		}
	}
	waitFor(t, "no plugin process left", func() bool { return len(children(t)) == len(before) })
}

func TestOnErrorPolicies(t *testing.T) {
	for _, tt := range []struct {
		policy string
		check  func(pipeline.Verdict, error) error
	}{
		{OnErrorTempfail, func(v pipeline.Verdict, err error) error {
			var ce *CallError
			if !errors.As(err, &ce) || !errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("want a CallError wrapping DeadlineExceeded, got %v", err)
			}
			return nil
		}},
		{OnErrorContinue, func(v pipeline.Verdict, err error) error {
			if err != nil || v.Action != pipeline.Continue {
				return fmt.Errorf("want continue, got %v %v", v, err)
			}
			return nil
		}},
		{OnErrorReject, func(v pipeline.Verdict, err error) error {
			if err != nil || v.Action != pipeline.Reject || v.Code != 550 {
				return fmt.Errorf("want reject 550, got %v %v", v, err)
			}
			return nil
		}},
	} {
		t.Run(tt.policy, func(t *testing.T) {
			s, _ := start(t, "hang", Options{OnError: tt.policy, Timeout: 100 * time.Millisecond})
			v, err := s.OnMessage(context.Background(), message(t, "x"))
			if e := tt.check(v, err); e != nil {
				t.Fatal(e)
			}
			// The chain turns the tempfail error into a 451 4.4.5.
			if tt.policy == OnErrorTempfail {
				chain, _ := pipeline.Compile([]pipeline.Stage{s}, pipeline.ChainOptions{})
				_, _, err := chain.Message(context.Background(), message(t, "y"))
				if r := pipeline.Reply(err); r.Code != 451 {
					t.Fatalf("chain reply %v", err)
				}
			}
		})
	}
	// A hook error from the plugin (not a crash) also follows on_error.
	s, _ := start(t, "ok", Options{OnError: OnErrorReject})
	m := message(t, "x")
	m.Header.Add("X-Fail", "1")
	if v, err := s.OnMessage(context.Background(), m); err != nil || v.Action != pipeline.Reject {
		t.Fatalf("plugin error under reject: %v %v", v, err)
	}
}

// TestHangRestarts, also with sdk.WithInlineCalls (the hook holds up the
// stream, but the calls still end at their deadline).
func TestHangRestarts(t *testing.T) {
	for _, inline := range []bool{false, true} {
		s, lb := start(t, "hang", Options{Env: inlineEnv(inline), OnError: OnErrorContinue, Timeout: 50 * time.Millisecond})
		pid := s.PID()
		for i := 0; i < hangLimit; i++ {
			if _, err := s.OnMessage(context.Background(), message(t, "x")); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, "a new process after the hangs", func() bool { p := s.PID(); return p != 0 && p != pid })
		waitFor(t, "the hung process to be gone", func() bool { return !alive(pid) })
		if !strings.Contains(lb.String(), "ran past their deadline") {
			t.Fatalf("inline %v: no restart reason in the log:\n%s", inline, lb)
		}
	}
}

// TestHangOfOneHookRestarts: a plugin whose on_message hangs while its
// on_rcpt still answers (a deadlock on one path) is restarted after
// hangLimit on_message deadlines in a row, although an on_rcpt answered
// between each: the answers of another hook do not prove this one alive.
func TestHangOfOneHookRestarts(t *testing.T) {
	s, lb := start(t, "hang", Options{OnError: OnErrorContinue, Timeout: 50 * time.Millisecond})
	pid := s.PID()
	txn := &pipeline.Txn{Conn: &pipeline.Conn{ID: "c"}, ID: "m1", Sender: "a@x.example"}
	for i := 0; i < hangLimit; i++ {
		if _, err := s.OnRcpt(context.Background(), txn, &pipeline.Recipient{Address: "b@y.example", Local: "b", Domain: "y.example"}); err != nil {
			t.Fatalf("on_rcpt %d: %v", i+1, err)
		}
		if s.PID() != pid {
			t.Fatalf("restarted before %d on_message deadlines in a row", hangLimit)
		}
		if _, err := s.OnMessage(context.Background(), message(t, "x")); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "a new process after the hangs", func() bool { p := s.PID(); return p != 0 && p != pid })
	if !strings.Contains(lb.String(), "ran past their deadline") {
		t.Fatalf("no restart reason in the log:\n%s", lb)
	}
}

func TestKilledPluginRestarts(t *testing.T) {
	s, _ := start(t, "ok", Options{HealthInterval: 50 * time.Millisecond})
	pid := s.PID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Calls meanwhile get on_error (tempfail), never hang or panic.
	for i := 0; i < 5; i++ {
		if _, err := s.OnMessage(context.Background(), message(t, "x")); err != nil {
			var ce *CallError
			if !errors.As(err, &ce) {
				t.Fatalf("error %T %v", err, err)
			}
		}
	}
	waitFor(t, "a restarted plugin", func() bool { p := s.PID(); return p != 0 && p != pid })
	v, err := s.OnMessage(context.Background(), message(t, "x"))
	if got, _ := header(v, "X-Plugin-Pid"); err != nil || got != strconv.Itoa(s.PID()) {
		t.Fatalf("after restart: %v %v", v, err)
	}
}

func fdCount() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	return len(ents)
}

// TestRepeatedCrashesNoLeak: a plugin that panics on every 10th message;
// the stage keeps answering (each call succeeds or follows on_error), the
// plugin is restarted each time, and after Close no goroutine, file
// descriptor or process is left.
func TestRepeatedCrashesNoLeak(t *testing.T) {
	g0, fd0, ch0 := runtime.NumGoroutine(), fdCount(), len(children(t))
	lb := &logBuf{}
	s, err := Start(Options{Name: "t", Cmd: faultyBin, Args: []string{"panic10"}, RestartMin: time.Millisecond, RestartMax: 5 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(lb, nil))})
	if err != nil {
		t.Fatal(err)
	}
	const crashes = 100
	pids := map[int]bool{}
	ok, failed := 0, 0
	for len(pids) <= crashes {
		v, err := s.OnMessage(context.Background(), message(t, "x"))
		if err != nil {
			var ce *CallError
			if !errors.As(err, &ce) {
				t.Fatalf("error %T %v", err, err)
			}
			failed++
			time.Sleep(time.Millisecond)
			continue
		}
		p, _ := header(v, "X-Plugin-Pid")
		n, _ := strconv.Atoi(p)
		pids[n] = true
		ok++
	}
	if failed < crashes {
		t.Fatalf("%d failed calls for %d processes", failed, len(pids))
	}
	if !strings.Contains(lb.String(), "plugin output") || !strings.Contains(lb.String(), "panic: message 10") {
		t.Errorf("the panic did not reach the log")
	}
	// The crashes print the runtime's scheduler state first (Sluice set
	// GODEBUG's schedtrace: sysmonAwake); it is not logged.
	if strings.Contains(lb.String(), "gomaxprocs=") || strings.Contains(lb.String(), "status=") {
		t.Errorf("the runtime's scheduler trace reached the log")
	}
	if !strings.Contains(lb.String(), "crash looping") {
		t.Errorf("no crash loop report in the log")
	}
	s.Close()
	waitFor(t, "no plugin process left", func() bool { return len(children(t)) == ch0 })
	waitFor(t, fmt.Sprintf("goroutines back to %d", g0), func() bool { return runtime.NumGoroutine() <= g0 })
	waitFor(t, fmt.Sprintf("file descriptors back to %d", fd0), func() bool { return fdCount() <= fd0 })
	t.Logf("%d processes, %d calls answered, %d failed", len(pids), ok, failed)
}

// helperHost runs in a child process: it starts the plugin, prints its pid
// and waits to be killed.
func helperHost() {
	s, err := Start(Options{Name: "t", Cmd: os.Getenv("PLUGIN_TEST_HOST"), Args: []string{"ok"}})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println(s.PID())
	select {}
}

// TestKill9LeavesNoPlugin: after kill -9 of the host, the plugin dies too.
func TestKill9LeavesNoPlugin(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("Pdeathsig is Linux only")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "PLUGIN_TEST_HOST="+faultyBin)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, _ := out.Read(buf)
	pid, err := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	if err != nil || !alive(pid) {
		cmd.Process.Kill()
		t.Fatalf("helper said %q", buf[:n])
	}
	cmd.Process.Kill() // SIGKILL
	cmd.Wait()
	waitFor(t, "the plugin to die with its host", func() bool { return !alive(pid) })
}

// TestLargeMessages: bodies around gRPC's 4 MiB default and well above it
// reach a full-body plugin whole (limits are raised on both sides).
func TestLargeMessages(t *testing.T) {
	s, _ := start(t, "ok", Options{Config: map[string]any{"body": "full"}})
	for _, size := range []int{3_900_000, 4_100_000, 30_000_000} {
		line := strings.Repeat("x", 998) + "\r\n"
		body := strings.Repeat(line, size/len(line)+1)
		txn := &pipeline.Txn{Conn: &pipeline.Conn{}, ID: "big"}
		m, err := pipeline.ParseMessage(txn, []byte("Subject: big\r\n\r\n"+body))
		if err != nil {
			t.Fatal(err)
		}
		v, err := s.OnMessage(context.Background(), m)
		if err != nil {
			t.Fatalf("%d bytes: %v", len(body), err)
		}
		if got, _ := header(v, "X-Body-Len"); got != strconv.Itoa(len(body)) {
			t.Fatalf("%d bytes: the plugin saw %s", len(body), got)
		}
	}
}

// BenchmarkOnMessageHeaders: one on_message call to a plugin that reads
// the header (no body) and adds header fields, through the real process
// boundary.
func BenchmarkOnMessageHeaders(b *testing.B) {
	s, err := Start(Options{Name: "b", Cmd: faultyBin, Args: []string{"ok"}, Config: map[string]any{"body": "headers"},
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	txn := &pipeline.Txn{Conn: &pipeline.Conn{ID: "c"}, ID: "m", Sender: "a@x.example"}
	m, _ := pipeline.ParseMessage(txn, []byte("From: a@x.example\r\nTo: b@y.example\r\nSubject: hello\r\nMessage-ID: <1@x>\r\n\r\n"+strings.Repeat("body line\r\n", 2000)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.OnMessage(context.Background(), m); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestMaxInFlight: with max_in_flight = 1 and the one slot taken by a
// hanging call, another call waits for the slot until its own deadline and
// then follows on_error, without reaching the plugin.
func TestMaxInFlight(t *testing.T) {
	s, _ := start(t, "hang", Options{MaxInFlight: 1, Timeout: time.Minute})
	done := make(chan error, 1)
	go func() {
		_, err := s.OnMessage(context.Background(), message(t, "first"))
		done <- err
	}()
	waitFor(t, "the first call to hold the slot", func() bool { return len(s.sem) == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := s.OnMessage(ctx, message(t, "second"))
	if err == nil || !strings.Contains(err.Error(), "max_in_flight=1") || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second call: %v", err)
	}
	s.Close() // ends the hanging call
	var ce *CallError
	if err := <-done; !errors.As(err, &ce) {
		t.Fatalf("first call after Close: %v", err)
	}
}

// TestRequireTLS: a plugin stage (protocol 1.4) sees the message's
// REQUIRETLS flag and sets or clears it with an edit that the chain
// applies to the transaction, over the Calls stream and over unary calls.
func TestRequireTLS(t *testing.T) {
	for _, transport := range []struct{ name, env string }{{"stream", ""}, {"unary", "FAULTY_UNARY=1"}} {
		t.Run(transport.name, func(t *testing.T) {
			s, lb := start(t, "ok", Options{Env: []string{transport.env}})
			chain, err := pipeline.Compile([]pipeline.Stage{s}, pipeline.ChainOptions{LocalDomains: []string{"x.example"}})
			if err != nil {
				t.Fatal(err)
			}
			for _, tc := range []struct {
				have bool
				set  string // X-Set-RequireTLS, "" for none
				want bool
			}{{false, "", false}, {true, "", true}, {false, "true", true}, {true, "false", false}} {
				txn := &pipeline.Txn{Conn: &pipeline.Conn{ID: "c"}, ID: "m1", Sender: "a@x.example"}
				txn.Params.RequireTLS = tc.have
				raw := "Subject: s\r\n"
				if tc.set != "" {
					raw += "X-Set-RequireTLS: " + tc.set + "\r\n"
				}
				m, err := pipeline.ParseMessage(txn, []byte(raw+"\r\nbody\r\n"))
				if err != nil {
					t.Fatal(err)
				}
				if discard, _, err := chain.Message(context.Background(), m); err != nil || discard {
					t.Fatalf("Message: %v %v\n%s", discard, err, lb)
				}
				if got := m.Header.Get("X-RequireTLS-Seen"); got != strconv.FormatBool(tc.have) {
					t.Errorf("have %v, set %q: plugin saw REQUIRETLS %q", tc.have, tc.set, got)
				}
				if m.Txn.Params.RequireTLS != tc.want {
					t.Errorf("have %v, set %q: REQUIRETLS %v after the stage, want %v", tc.have, tc.set, m.Txn.Params.RequireTLS, tc.want)
				}
			}
		})
	}
}
