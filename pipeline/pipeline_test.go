package pipeline

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestReply(t *testing.T) {
	tests := []struct {
		name string
		err  error
		code int
		enh  string
		msg  string
	}{
		{"smtp error passes through", Errorf(550, EnhancedCode{5, 1, 1}, "no such user"), 550, "5.1.1", "no such user"},
		{"enhanced derived from code", &Error{Code: 421, Message: "bye"}, 421, "4.0.0", "bye"},
		{"wrapped error", fmt.Errorf("ctx: %w", ErrRelayDenied), 550, "5.7.1", "Relay access denied"},
		{"deadline", fmt.Errorf("lua: %w", context.DeadlineExceeded), 451, "4.4.5", ErrStageTimeout.Message},
		{"unknown is generic 451", errors.New("secret: db password wrong"), 451, "4.3.0", ErrInternal.Message},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Reply(tt.err)
			if r.Code != tt.code || r.Enhanced.String() != tt.enh || r.Message != tt.msg || r.Cause != nil {
				t.Fatalf("Reply = %d %s %q (cause %v), want %d %s %q", r.Code, r.Enhanced, r.Message, r.Cause, tt.code, tt.enh, tt.msg)
			}
		})
	}
	if Reply(nil).Code != 0 {
		t.Fatal("Reply(nil) not zero")
	}
}

func TestTemporaryClassification(t *testing.T) {
	// maddy once shipped a helper that made every code permanent: check both ways.
	for code, temp := range map[int]bool{421: true, 450: true, 451: true, 452: true, 550: false, 554: false, 556: false} {
		if got := IsTemporary(&Error{Code: code}); got != temp {
			t.Errorf("IsTemporary(%d) = %v", code, got)
		}
	}
	if !IsTemporary(errors.New("connection reset")) {
		t.Error("unknown errors must be temporary")
	}
}

func TestParseEnhancedCode(t *testing.T) {
	if c, err := ParseEnhancedCode("5.7.1"); err != nil || c != (EnhancedCode{5, 7, 1}) {
		t.Fatalf("got %v %v", c, err)
	}
	for _, bad := range []string{"", "5.7", "3.0.0", "5.x.1", "5.7.1.2", "5.7.-1"} {
		if _, err := ParseEnhancedCode(bad); err == nil {
			t.Errorf("ParseEnhancedCode(%q) accepted", bad)
		}
	}
}

func TestVerdictErrForcesClass(t *testing.T) {
	e := Verdict{Action: Tempfail, Code: 550, Enhanced: EnhancedCode{5, 1, 1}}.Err("s")
	if e.Code != 451 || e.Enhanced[0] != 4 || !e.Temporary() {
		t.Fatalf("tempfail with 5xx code became %v", e)
	}
	e = Verdict{Action: Reject, Code: 451}.Err("s")
	if e.Code != 550 || e.Enhanced != (EnhancedCode{5, 7, 1}) || e.Temporary() {
		t.Fatalf("reject with 4xx code became %v", e)
	}
	e = Verdict{Action: Reject, Code: 554, Enhanced: EnhancedCode{5, 7, 0}, Text: "go away"}.Err("s")
	if e.Code != 554 || e.Enhanced.String() != "5.7.0" || e.Message != "go away" {
		t.Fatalf("explicit reject changed: %v", e)
	}
}

func TestSplitAddress(t *testing.T) {
	l, d, err := SplitAddress("Bob.Smith@Example.ORG.")
	if err != nil || l != "Bob.Smith" || d != "example.org" {
		t.Fatalf("got %q %q %v", l, d, err)
	}
	for _, bad := range []string{"", "bob", "@x.org", "bob@", "bo\rb@x.org", "bob@x.org\n", "b ob@x.org", "b\x00@x.org", "bob@.", "bob@a..b"} {
		if _, _, err := SplitAddress(bad); err == nil {
			t.Errorf("SplitAddress(%q) accepted", bad)
		}
	}
}

type hookStage struct {
	name string
	rcpt func(*Recipient) (Verdict, error)
	rte  func(*Recipient) (Verdict, error)
}

func (s *hookStage) Name() string { return s.name }
func (s *hookStage) OnRcpt(ctx context.Context, txn *Txn, r *Recipient) (Verdict, error) {
	return s.rcpt(r)
}

type routeStage struct{ hookStage }

func (s *routeStage) OnRoute(ctx context.Context, m *Message, r *Recipient) (Verdict, error) {
	return s.rte(r)
}

type slowStage struct{}

func (slowStage) Name() string { return "slow" }
func (slowStage) OnMail(ctx context.Context, txn *Txn) (Verdict, error) {
	<-ctx.Done()
	return Verdict{}, ctx.Err()
}

type panicStage struct{}

func (panicStage) Name() string                                          { return "boom" }
func (panicStage) OnMail(ctx context.Context, txn *Txn) (Verdict, error) { panic("oops") }

func TestChainRelayControl(t *testing.T) {
	accept := &hookStage{name: "allow-partner", rcpt: func(r *Recipient) (Verdict, error) {
		if r.Domain == "partner.test" {
			return AcceptVerdict(), nil
		}
		return Verdict{}, nil
	}}
	c, err := Compile([]Stage{accept}, ChainOptions{LocalDomains: []string{"Local.Test"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		conn Conn
		rcpt string
		ok   bool
	}{
		{Conn{}, "a@local.test", true},
		{Conn{}, "a@partner.test", true},
		{Conn{}, "a@foreign.test", false},
		{Conn{RelayNetwork: true}, "a@foreign.test", true},
		{Conn{Identity: &Identity{Name: "u"}}, "a@foreign.test", true},
	} {
		conn := tt.conn
		r, _ := NewRecipient(tt.rcpt)
		err := c.Rcpt(context.Background(), &Txn{Conn: &conn}, r)
		if (err == nil) != tt.ok {
			t.Errorf("%+v %s: err=%v want ok=%v", tt.conn, tt.rcpt, err, tt.ok)
		}
		if err != nil && Reply(err).Code != 550 {
			t.Errorf("relay denial code %d", Reply(err).Code)
		}
	}
}

func TestChainStopsAtFirstDecisionAndRoutes(t *testing.T) {
	var calls []string
	mk := func(name string, v Verdict) *routeStage {
		return &routeStage{hookStage{name: name,
			rcpt: func(*Recipient) (Verdict, error) { calls = append(calls, name); return v, nil },
			rte:  func(*Recipient) (Verdict, error) { calls = append(calls, name+":route"); return v, nil },
		}}
	}
	relay := &Route{Kind: RouteRelay, Host: "smart.test", Port: 587}
	c, err := Compile([]Stage{mk("a", Verdict{}), mk("b", RouteVerdict(relay)), mk("c", RejectVerdict(550, EnhancedCode{5, 0, 0}, "x"))}, ChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r, _ := NewRecipient("x@y.test")
	txn := &Txn{Conn: &Conn{}}
	if err := c.Rcpt(context.Background(), txn, r); err != nil {
		t.Fatal(err)
	}
	got, drop, err := c.Route(context.Background(), &Message{Txn: txn}, r)
	if err != nil || drop || got != relay {
		t.Fatalf("Route = %v %v %v", got, drop, err)
	}
	if strings.Join(calls, ",") != "a,b,a:route,b:route" {
		t.Fatalf("calls = %v", calls)
	}
	// Invalid route from a stage is a stage failure (temporary, generic).
	bad := mk("bad", RouteVerdict(&Route{Kind: "carrier-pigeon"}))
	c2, _ := Compile([]Stage{bad}, ChainOptions{})
	if _, _, err := c2.Route(context.Background(), &Message{Txn: txn}, r); Reply(err).Code != 451 {
		t.Fatalf("invalid route: %v", err)
	}
	// No route stage: MX.
	c3, _ := Compile(nil, ChainOptions{})
	if got, _, _ := c3.Route(context.Background(), &Message{Txn: txn}, r); got.Kind != RouteMX {
		t.Fatalf("default route %v", got)
	}
}

func TestChainDeadlineAndPanic(t *testing.T) {
	c, _ := Compile([]Stage{slowStage{}}, ChainOptions{StageTimeout: 20 * time.Millisecond})
	err := c.Mail(context.Background(), &Txn{Conn: &Conn{}})
	if r := Reply(err); r.Code != 451 || r.Enhanced.String() != "4.4.5" {
		t.Fatalf("deadline reply = %v", r)
	}
	c, _ = Compile([]Stage{panicStage{}}, ChainOptions{RecoverPanics: true})
	err = c.Mail(context.Background(), &Txn{Conn: &Conn{}})
	if r := Reply(err); r.Code != 451 || strings.Contains(r.Message, "oops") {
		t.Fatalf("panic reply = %v", r)
	}
}

func TestCompileRejectsDuplicateNames(t *testing.T) {
	if _, err := Compile([]Stage{slowStage{}, slowStage{}}, ChainOptions{}); err == nil {
		t.Fatal("duplicate stage names accepted")
	}
}

func TestRouteValidateAndQueueName(t *testing.T) {
	if err := (&Route{Kind: RouteRelay}).Validate(); err == nil {
		t.Error("relay without host accepted")
	}
	if err := (&Route{Kind: RouteMX, TLS: "maybe"}).Validate(); err == nil {
		t.Error("bad tls accepted")
	}
	if n := (&Route{Kind: RouteRelay, Host: "h"}).QueueName("d"); n != "relay:h:25" {
		t.Errorf("queue name %q", n)
	}
	if n := MX().QueueName("example.org"); n != "example.org" {
		t.Errorf("queue name %q", n)
	}
}

func TestParseMessageAndBytes(t *testing.T) {
	raw := "From: a@x\r\nSubject: hi\r\n\r\nbody line\r\n"
	m, err := ParseMessage(&Txn{}, []byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Body) != "body line\r\n" || m.Header.Get("Subject") != "hi" {
		t.Fatalf("parsed header %v body %q", m.Header.Get("Subject"), m.Body)
	}
	m.Header.Add("X-Added", "1")
	out, _ := m.Bytes()
	if string(out) != "X-Added: 1\r\n"+raw {
		t.Fatalf("bytes = %q", out)
	}
}

type listed struct{ hookStage }

func (listed) Hooks() []string { return []string{"on_route"} }
func (s *listed) OnRoute(ctx context.Context, m *Message, r *Recipient) (Verdict, error) {
	return RouteVerdict(&Route{Kind: RouteRelay, Host: "h"}), nil
}

func TestHookListerLimitsRegisteredHooks(t *testing.T) {
	s := &listed{hookStage{name: "l", rcpt: func(*Recipient) (Verdict, error) {
		return RejectVerdict(550, EnhancedCode{}, "must not run"), nil
	}}}
	c, err := Compile([]Stage{s}, ChainOptions{LocalDomains: []string{"y.test"}})
	if err != nil {
		t.Fatal(err)
	}
	r, _ := NewRecipient("x@y.test")
	txn := &Txn{Conn: &Conn{}}
	if err := c.Rcpt(context.Background(), txn, r); err != nil {
		t.Fatalf("unlisted on_rcpt ran: %v", err)
	}
	if rt, _, _ := c.Route(context.Background(), &Message{Txn: txn}, r); rt.Kind != RouteRelay {
		t.Fatalf("listed on_route did not run: %v", rt)
	}
}

func TestParseMessageEdgeCases(t *testing.T) {
	// A header-only message gains the empty line that ends its header.
	for raw, want := range map[string]string{
		"Subject: only header\r\n":    "Subject: only header\r\n\r\n",
		"Subject: x\r\n\r\n":          "Subject: x\r\n\r\n",
		"\r\nbody without header\r\n": "\r\nbody without header\r\n",
	} {
		m, err := ParseMessage(&Txn{}, []byte(raw))
		if err != nil {
			t.Errorf("%q: %v", raw, err)
			continue
		}
		out, _ := m.Bytes()
		if string(out) != want {
			t.Errorf("%q round-tripped to %q", raw, out)
		}
	}
}

// Header defects that peers accept (issue 13 item 5) are accepted, and the
// bytes pass unchanged: only fields a stage adds come before them.
func TestParseMessageTolerant(t *testing.T) {
	for _, tt := range []struct {
		raw     string
		fields  int
		subject string
	}{
		{"Subject: no blank line\r\nbody starts here\r\nmore\r\n", 1, "no blank line"},
		{"only a body\r\nsecond line\r\n", 0, ""},
		{"no colon here\r\n\r\nbody", 0, ""},
		{" leading space: x\r\n\r\nbody\r\n", 0, ""},
		{"Bad Key: x\r\n\r\n", 0, ""},
		{"Subject: folded\r\n continued\r\nX-A: 1\r\nbody: not a field? it is\r\n\r\nb\r\n", 3, "folded continued"},
		{"Subject: unterminated", 0, ""},
		{"Subject : spaced\r\n\r\nbody\r\n", 1, "spaced"},
	} {
		m, err := ParseMessage(&Txn{}, []byte(tt.raw))
		if err != nil {
			t.Errorf("%q: %v", tt.raw, err)
			continue
		}
		if m.Header.Len() != tt.fields || m.Header.Get("Subject") != tt.subject {
			t.Errorf("%q: %d fields, subject %q", tt.raw, m.Header.Len(), m.Header.Get("Subject"))
		}
		out, _ := m.Bytes()
		if string(out) != tt.raw {
			t.Errorf("%q round-tripped to %q", tt.raw, out)
		}
		m.Header.Add("Received", "from x by y")
		out, _ = m.Bytes()
		if string(out) != "Received: from x by y\r\n"+tt.raw {
			t.Errorf("%q with Received: %q", tt.raw, out)
		}
	}
}

// TestParseMessageMboxFromLine: an mbox "From " line first is framing,
// dropped: the fields after it are the header, so a Received field above
// them keeps the message well-formed, and stages see its Subject.
func TestParseMessageMboxFromLine(t *testing.T) {
	m, err := ParseMessage(&Txn{}, []byte("From sender@example.org Mon Nov 30 05:00:00 2026\r\nSubject: mbox\r\n\r\nbody\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	m.Header.Add("Received", "from x by y")
	out, _ := m.Bytes()
	if m.Header.Get("Subject") != "mbox" || string(out) != "Received: from x by y\r\nSubject: mbox\r\n\r\nbody\r\n" {
		t.Fatalf("subject %q, bytes %q", m.Header.Get("Subject"), out)
	}
}

type deadlineProbe struct {
	name    string
	timeout time.Duration
	had     bool
}

func (d *deadlineProbe) Name() string { return d.name }
func (d *deadlineProbe) OnMail(ctx context.Context, txn *Txn) (Verdict, error) {
	_, d.had = ctx.Deadline()
	return Verdict{}, nil
}

type boundedProbe struct{ deadlineProbe }

func (b *boundedProbe) CallTimeout() time.Duration { return b.timeout }

func TestBoundedStagesSkipTheChainTimer(t *testing.T) {
	plain := &deadlineProbe{name: "plain"}
	own := &boundedProbe{deadlineProbe{name: "own", timeout: 100 * time.Millisecond}}
	longer := &boundedProbe{deadlineProbe{name: "longer", timeout: time.Hour}}
	c, err := Compile([]Stage{plain, own, longer}, ChainOptions{StageTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Mail(context.Background(), &Txn{Conn: &Conn{}}); err != nil {
		t.Fatal(err)
	}
	if !plain.had || own.had || !longer.had {
		t.Fatalf("deadline seen: plain=%v own=%v longer=%v; want true false true", plain.had, own.had, longer.had)
	}
}
