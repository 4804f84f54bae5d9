package relay

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/dsn"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

var t0 = time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)

const origMsg = "Subject: orig\r\nMessage-ID: <orig@a.test>\r\n\r\nTHE BODY\r\n"

// original spools a message from s@a.test with the given MAIL FROM
// parameters and one recipient per params entry (x0@b.test, x1@b.test,
// ...), as acceptance would, and returns them.
func original(t *testing.T, r *Relay, sp *spool.Spool, mp pipeline.MailParams, rps ...pipeline.RcptParams) (*spool.Meta, []*spool.Recipient) {
	t.Helper()
	id := r.NewID()
	m := &spool.Meta{ID: id, Sender: "s@a.test", Source: pipeline.SourceSMTP, Received: t0, Size: len(origMsg), Params: mp}
	b := sp.NewBatch()
	if err := b.PutMessage(m, []byte(origMsg)); err != nil {
		t.Fatal(err)
	}
	var rcpts []*spool.Recipient
	for i, p := range rps {
		rc := &spool.Recipient{MsgID: id, Idx: i, Address: "x" + string(rune('0'+i)) + "@b.test", Domain: "b.test",
			Route: pipeline.MX(), Params: p}
		if err := b.PutRecipient(rc); err != nil {
			t.Fatal(err)
		}
		rcpts = append(rcpts, rc)
	}
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	return m, rcpts
}

func body() ([]byte, error) { return []byte(origMsg), nil }

// notify calls Notify in a batch of its own, commits it and returns the
// DSN's metadata and bytes ("" when none was sent).
func notify(t *testing.T, r *Relay, sp *spool.Spool, m *spool.Meta, notes ...dsn.Notice) (*spool.Meta, string) {
	t.Helper()
	b := sp.NewBatch()
	bm, rcpts := r.Notify(context.Background(), b, m, body, notes)
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	if bm == nil {
		if len(rcpts) != 0 {
			t.Fatalf("no DSN but recipients %v", rcpts)
		}
		return nil, ""
	}
	if len(rcpts) != 1 || rcpts[0].Address != m.Sender || bm.Sender != "" || bm.Source != pipeline.SourceDSN {
		t.Fatalf("DSN %+v to %v", bm, rcpts)
	}
	data, err := sp.Body(bm.ID)
	if err != nil {
		t.Fatal(err)
	}
	return bm, string(data)
}

var bounced = pipeline.Errorf(550, pipeline.EnhancedCode{5, 1, 1}, "no such user")
var deferred = pipeline.Errorf(451, pipeline.EnhancedCode{4, 4, 1}, "connection refused")

func notify1(n ...string) pipeline.RcptParams { return pipeline.RcptParams{Notify: n} }

// TestNotifyFailure: NOTIFY decides who is in a failure DSN; a recipient
// that asked for none is left out, and no DSN is sent when none is left.
func TestNotifyFailure(t *testing.T) {
	tests := []struct {
		name   string
		params []pipeline.RcptParams
		want   []string // Final-Recipients in the DSN; nil: no DSN
	}{
		{"default", []pipeline.RcptParams{{}}, []string{"x0@b.test"}},
		{"FAILURE", []pipeline.RcptParams{notify1("FAILURE")}, []string{"x0@b.test"}},
		{"FAILURE,DELAY", []pipeline.RcptParams{notify1("FAILURE", "DELAY")}, []string{"x0@b.test"}},
		{"NEVER", []pipeline.RcptParams{notify1("NEVER")}, nil},
		{"SUCCESS only", []pipeline.RcptParams{notify1("SUCCESS")}, nil},
		{"DELAY only", []pipeline.RcptParams{notify1("DELAY")}, nil},
		{"one of two", []pipeline.RcptParams{notify1("NEVER"), {}}, []string{"x1@b.test"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, sp := setupWith(t, 0)
			m, rcpts := original(t, r, sp, pipeline.MailParams{}, tt.params...)
			var notes []dsn.Notice
			for _, rc := range rcpts {
				notes = append(notes, dsn.Notice{Outcome: dsn.Failed, Rcpt: rc, Err: bounced, Time: t0.Add(time.Minute)})
			}
			bm, data := notify(t, r, sp, m, notes...)
			if tt.want == nil {
				if bm != nil {
					t.Fatalf("a DSN was sent:\n%s", data)
				}
				return
			}
			if bm == nil {
				t.Fatal("no DSN")
			}
			for _, rc := range rcpts {
				in := strings.Contains(data, "Final-Recipient: rfc822; "+rc.Address)
				if want := strings.Contains(strings.Join(tt.want, " "), rc.Address); in != want {
					t.Errorf("%s in the DSN: %v, want %v\n%s", rc.Address, in, want, data)
				}
			}
			if !strings.Contains(data, "X-Stage: seen dsn") {
				t.Errorf("the DSN did not pass on_message:\n%s", data)
			}
			if bm.Meta["bounce_of"] != m.ID || bm.Meta["dsn_of"] != m.ID || bm.Meta["dsn_action"] != "failed" {
				t.Errorf("DSN metadata %v", bm.Meta)
			}
			if ev := eventTypes(t, sp, bm.ID); ev != "received:s@a.test" {
				t.Errorf("DSN events %q", ev)
			}
		})
	}
}

// TestNotifyNullSender: a message from <> gets no DSN of any kind.
func TestNotifyNullSender(t *testing.T) {
	r, sp := setupWith(t, time.Hour)
	m, rcpts := original(t, r, sp, pipeline.MailParams{}, notify1("SUCCESS", "FAILURE", "DELAY"))
	m.Sender = ""
	for _, o := range []dsn.Outcome{dsn.Failed, dsn.Delayed, dsn.Delivered} {
		if bm, _ := notify(t, r, sp, m, dsn.Notice{Outcome: o, Rcpt: rcpts[0], Err: bounced, Time: t0.Add(5 * time.Hour)}); bm != nil {
			t.Errorf("outcome %d: a DSN to <>", o)
		}
	}
}

// TestNotifyReturn: RET=FULL returns the whole message, RET=HDRS and no
// RET its headers; ENVID and ORCPT are reported.
func TestNotifyReturn(t *testing.T) {
	tests := []struct {
		ret       string
		full      bool
		wantParts string
	}{
		{"FULL", true, "Content-Type: message/rfc822"},
		{"full", true, "Content-Type: message/rfc822"},
		{"HDRS", false, "Content-Type: text/rfc822-headers"},
		{"", false, "Content-Type: text/rfc822-headers"},
	}
	for _, tt := range tests {
		t.Run("RET="+tt.ret, func(t *testing.T) {
			r, sp := setupWith(t, 0)
			m, rcpts := original(t, r, sp, pipeline.MailParams{Ret: tt.ret, EnvID: "order-42"},
				pipeline.RcptParams{ORCPT: "rfc822;Orig@B.test"})
			_, data := notify(t, r, sp, m, dsn.Notice{Outcome: dsn.Failed, Rcpt: rcpts[0], Err: bounced})
			if !strings.Contains(data, tt.wantParts) || strings.Contains(data, "THE BODY") != tt.full {
				t.Errorf("RET=%s:\n%s", tt.ret, data)
			}
			for _, w := range []string{"Original-Envelope-Id: order-42", "Original-Recipient: rfc822; Orig@B.test",
				"Final-Recipient: rfc822; x0@b.test", "Message-ID: <orig@a.test>"} {
				if !strings.Contains(data, w) {
					t.Errorf("DSN lacks %q:\n%s", w, data)
				}
			}
		})
	}
	// A message over the cap comes back as its headers, with a note.
	r, sp := setupWith(t, 0)
	m, rcpts := original(t, r, sp, pipeline.MailParams{Ret: "FULL"}, pipeline.RcptParams{})
	big := []byte(origMsg + strings.Repeat("0123456789abcdef\r\n", dsn.MaxReturn/18+1))
	b := sp.NewBatch()
	bm, _ := r.Notify(context.Background(), b, m, func() ([]byte, error) { return big, nil },
		[]dsn.Notice{{Outcome: dsn.Failed, Rcpt: rcpts[0], Err: bounced}})
	if err := b.Commit(true); err != nil || bm == nil {
		t.Fatalf("%v %v", bm, err)
	}
	data, _ := sp.Body(bm.ID)
	if strings.Contains(string(data), "THE BODY") || !strings.Contains(string(data), "text/rfc822-headers") ||
		!strings.Contains(string(data), "only its headers are attached") || len(data) > 64<<10 {
		t.Errorf("oversized RET=FULL: %d bytes\n%.3000s", len(data), data)
	}
}

// TestNotifySuccess: NOTIFY=SUCCESS gets "relayed" when the next hop did
// not take DSN responsibility, nothing when it did (it reports), and
// "delivered" for a final delivery; no one else gets a success DSN.
func TestNotifySuccess(t *testing.T) {
	tests := []struct {
		name          string
		params        pipeline.RcptParams
		hopDSN, final bool
		want          string // Action; "" no DSN
	}{
		{"relayed", notify1("SUCCESS"), false, false, "relayed"},
		{"hop took over", notify1("SUCCESS", "FAILURE"), true, false, ""},
		{"final", notify1("SUCCESS"), true, true, "delivered"},
		{"default", pipeline.RcptParams{}, false, false, ""},
		{"FAILURE,DELAY", notify1("FAILURE", "DELAY"), false, false, ""},
		{"NEVER", notify1("NEVER"), false, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, sp := setupWith(t, 0)
			p := tt.params
			p.ORCPT = "rfc822;x0@b.test"
			m, rcpts := original(t, r, sp, pipeline.MailParams{EnvID: "e-1"}, p)
			bm, data := notify(t, r, sp, m, dsn.Notice{Outcome: dsn.Delivered, Rcpt: rcpts[0], Remote: "mx.b.test",
				HopDSN: tt.hopDSN, Final: tt.final, Time: t0.Add(time.Minute)})
			if tt.want == "" {
				if bm != nil {
					t.Fatalf("a DSN was sent:\n%s", data)
				}
				return
			}
			for _, w := range []string{"Action: " + tt.want, "Status: 2.0.0", "Remote-MTA: dns; mx.b.test",
				"Subject: Successful Mail Delivery Report", "Original-Envelope-Id: e-1",
				"Original-Recipient: rfc822; x0@b.test", "X-Stage: seen dsn"} {
				if !strings.Contains(data, w) {
					t.Errorf("DSN lacks %q:\n%s", w, data)
				}
			}
			if bm.Meta["dsn_action"] != tt.want || bm.Meta["bounce_of"] != "" || bm.Meta["dsn_of"] != m.ID {
				t.Errorf("DSN metadata %v", bm.Meta)
			}
		})
	}
}

// spooled returns the spooled recipient idx of message id.
func spooled(t *testing.T, sp *spool.Spool, id string, idx int) *spool.Recipient {
	t.Helper()
	var got *spool.Recipient
	sp.ScanRecipients(func(m *spool.Meta, r *spool.Recipient) error {
		if m.ID == id && r.Idx == idx {
			got = r
		}
		return nil
	})
	if got == nil {
		t.Fatalf("recipient %s/%d not spooled", id, idx)
	}
	return got
}

// TestNotifyDelay: a delay warning after delay_warning, then at most one
// per interval, remembered in the spool (so across restarts); NOTIFY
// decides who gets one; "0" turns them off.
func TestNotifyDelay(t *testing.T) {
	r, sp := setupWith(t, 4*time.Hour)
	m, _ := original(t, r, sp, pipeline.MailParams{}, pipeline.RcptParams{}, notify1("DELAY"), notify1("FAILURE"), notify1("NEVER"))
	until := t0.Add(120 * time.Hour)

	// defer does what the queue does for a deferred recipient: copy it,
	// count the attempt, put it into the outcome batch, and hand that
	// very value to Notify.
	deferAt := func(at time.Duration, idx ...int) (*spool.Meta, string) {
		t.Helper()
		b := sp.NewBatch()
		var notes []dsn.Notice
		for _, i := range idx {
			nr := *spooled(t, sp, m.ID, i)
			nr.Attempts++
			if err := b.PutRecipient(&nr); err != nil {
				t.Fatal(err)
			}
			notes = append(notes, dsn.Notice{Outcome: dsn.Delayed, Rcpt: &nr, Err: deferred, Time: t0.Add(at), RetryUntil: until})
		}
		bm, _ := r.Notify(context.Background(), b, m, body, notes)
		if err := b.Commit(false); err != nil {
			t.Fatal(err)
		}
		if bm == nil {
			return nil, ""
		}
		data, _ := sp.Body(bm.ID)
		return bm, string(data)
	}
	all := []int{0, 1, 2, 3}

	if bm, data := deferAt(time.Hour, all...); bm != nil {
		t.Fatalf("a warning after 1h:\n%s", data)
	}
	bm, data := deferAt(4*time.Hour, all...)
	if bm == nil {
		t.Fatal("no warning after 4h")
	}
	for _, w := range []string{"Action: delayed", "Status: 4.4.1", "Subject: Delayed Mail",
		"Diagnostic-Code: x-sluice; 451 4.4.1 connection refused", "Will-Retry-Until: " + until.Format(time.RFC1123Z),
		"Final-Recipient: rfc822; x0@b.test", "Final-Recipient: rfc822; x1@b.test", "X-Stage: seen dsn"} {
		if !strings.Contains(data, w) {
			t.Errorf("warning lacks %q:\n%s", w, data)
		}
	}
	for _, not := range []string{"x2@b.test", "x3@b.test", "THE BODY"} {
		if strings.Contains(data, not) {
			t.Errorf("warning has %q:\n%s", not, data)
		}
	}
	if bm.Meta["dsn_action"] != "delayed" || bm.Meta["bounce_of"] != "" {
		t.Errorf("warning metadata %v", bm.Meta)
	}
	// The mark is in the spool, with the attempt the queue counted.
	for i, want := range []time.Time{t0.Add(4 * time.Hour), t0.Add(4 * time.Hour), {}, {}} {
		got := spooled(t, sp, m.ID, i)
		if !got.Warned.Equal(want) || got.Attempts != 2 {
			t.Errorf("recipient %d: Warned %v attempts %d, want %v 2", i, got.Warned, got.Attempts, want)
		}
	}

	// A "restart": a new relay on the same spool reads the mark.
	r2 := NewSpool(r.Pipeline(), sp, nil, Options{Hostname: "relay.test", Logger: slog.New(slog.DiscardHandler), DelayWarning: 4 * time.Hour})
	r = r2
	if bm, data := deferAt(7*time.Hour, all...); bm != nil {
		t.Fatalf("a second warning within the interval:\n%s", data)
	}
	if bm, _ := deferAt(8*time.Hour, 0); bm == nil {
		t.Fatal("no warning one interval later")
	}
	if bm, _ := deferAt(11*time.Hour, 0); bm != nil {
		t.Fatal("x0 was warned at 8h; 11h is within its interval")
	}
	if bm, _ := deferAt(11*time.Hour, 1); bm == nil {
		t.Fatal("x1 was last warned at 4h; no warning at 11h")
	}
	// At the end of the queue lifetime the failure DSN follows; no warning.
	if bm, _ := deferAt(120*time.Hour, 0); bm != nil {
		t.Fatal("a warning at expiry")
	}

	// delay_warning "0": none.
	r0, sp0 := setupWith(t, 0)
	m0, rc0 := original(t, r0, sp0, pipeline.MailParams{}, pipeline.RcptParams{})
	if bm, _ := notify(t, r0, sp0, m0, dsn.Notice{Outcome: dsn.Delayed, Rcpt: rc0[0], Err: deferred, Time: t0.Add(100 * time.Hour)}); bm != nil {
		t.Fatal("a warning with delay_warning 0")
	}
}

// TestNotifyMixed: one outcome batch, one report: a failure, a due
// warning and a success together.
func TestNotifyMixed(t *testing.T) {
	r, sp := setupWith(t, time.Hour)
	m, rcpts := original(t, r, sp, pipeline.MailParams{}, pipeline.RcptParams{}, pipeline.RcptParams{}, notify1("SUCCESS"))
	at := t0.Add(2 * time.Hour)
	bm, data := notify(t, r, sp, m,
		dsn.Notice{Outcome: dsn.Failed, Rcpt: rcpts[0], Err: bounced, Time: at},
		dsn.Notice{Outcome: dsn.Delayed, Rcpt: rcpts[1], Err: deferred, Time: at},
		dsn.Notice{Outcome: dsn.Delivered, Rcpt: rcpts[2], Time: at})
	if bm == nil {
		t.Fatal("no DSN")
	}
	if bm.Meta["dsn_action"] != "delayed,failed,relayed" || bm.Meta["bounce_of"] != m.ID {
		t.Errorf("metadata %v", bm.Meta)
	}
	if strings.Count(data, "Final-Recipient:") != 3 || !strings.Contains(data, "Subject: Undelivered Mail Returned to Sender") {
		t.Errorf("DSN:\n%s", data)
	}
}

// TestRouteRefusalNOTIFY: a recipient refused at on_route gets the
// bounce its NOTIFY asks for, with its ORCPT and the message's ENVID.
func TestRouteRefusalNOTIFY(t *testing.T) {
	for _, tc := range []struct {
		notify []string
		bounce bool
	}{{nil, true}, {[]string{"NEVER"}, false}, {[]string{"SUCCESS"}, false}, {[]string{"FAILURE"}, true}} {
		t.Run(strings.Join(tc.notify, ","), func(t *testing.T) {
			r, sp := setup(t)
			sess := r.NewSession(&pipeline.Conn{Source: pipeline.SourceSMTP, RelayNetwork: true})
			txn, err := sess.BeginWith(context.Background(), "s@a.test", pipeline.MailParams{EnvID: "env-7", Ret: "FULL"}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := txn.Rcpt(context.Background(), "ok@b.test"); err != nil {
				t.Fatal(err)
			}
			if _, err := txn.RcptWith(context.Background(), "perm@b.test", pipeline.RcptParams{Notify: tc.notify, ORCPT: "rfc822;Perm@B.test"}); err != nil {
				t.Fatal(err)
			}
			if _, err := txn.Commit(context.Background(), message(t, txn, "hi"), CommitOptions{OneReply: true}); err != nil {
				t.Fatal(err)
			}
			got := strings.Join(queued(t, sp), ",")
			if want := map[bool]string{true: "dsn:s@a.test,smtp:ok@b.test", false: "smtp:ok@b.test"}[tc.bounce]; got != want {
				t.Fatalf("spooled %s, want %s", got, want)
			}
			if !tc.bounce {
				return
			}
			_, data := dsnOf(t, sp)
			for _, w := range []string{"Original-Envelope-Id: env-7", "Original-Recipient: rfc822; Perm@B.test",
				"Content-Type: message/rfc822", "Subject: hi"} {
				if !strings.Contains(data, w) {
					t.Errorf("DSN lacks %q:\n%s", w, data)
				}
			}
		})
	}
}
