package conv

import (
	"bytes"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message/textproto"

	"github.com/sluice-mta/sluice/pipeline"
	stagev1 "github.com/sluice-mta/sluice/plugins/proto/stage/v1"
	"google.golang.org/protobuf/proto"
)

// wire sends m through its binary encoding, as gRPC does.
func wire[T proto.Message](t *testing.T, m T) T {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	out := m.ProtoReflect().New().Interface().(T)
	if err := proto.Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
	return out
}

func sampleTxn() *pipeline.Txn {
	return &pipeline.Txn{
		Conn: &pipeline.Conn{ID: "c1", Source: pipeline.SourceSMTP, Listener: "127.0.0.1:2525", ServerName: "mx.example",
			RemoteIP: netip.MustParseAddr("2001:db8::1"), RemotePort: 40000, HELO: "client.example", TLS: "TLS1.3",
			Identity:     &pipeline.Identity{Name: "u", Tenant: "t", Method: "smtp-auth", Scopes: []string{"send"}, Senders: []string{"x.example"}},
			RelayNetwork: true},
		ID: "01HZ", Sender: `"odd sender"@origin.example`,
		Params: pipeline.MailParams{Body: pipeline.Body8BitMIME, SMTPUTF8: true, Ret: "HDRS", EnvID: "e1", RequireTLS: true},
		Recipients: []*pipeline.Recipient{{Address: "bob@dest.example", Local: "bob", Domain: "dest.example", Relay: true,
			Route:  &pipeline.Route{Kind: pipeline.RouteRelay, Host: "smart.example", Port: 587, TLS: pipeline.TLSRequired, AuthUser: "a", AuthPass: "p"},
			Params: pipeline.RcptParams{Notify: []string{"FAILURE"}, ORCPT: "rfc822;bob@dest.example"}}},
		Meta: map[string]string{"k": "v"}, Tags: []string{"t1"}, Received: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC),
		Scratch:     map[string]string{"spf": "pass"},
		AuthResults: []pipeline.AuthResult{{Method: "spf", Result: "pass", Reason: "r", Props: []string{"smtp.mailfrom=origin.example"}}},
	}
}

func TestTxnRoundTrip(t *testing.T) {
	in := sampleTxn()
	out := TxnFrom(wire(t, Txn(in)))
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip:\n in %+v\nout %+v", in, out)
	}
	if !reflect.DeepEqual(in.Conn, out.Conn) || !reflect.DeepEqual(in.Recipients[0], out.Recipients[0]) {
		t.Fatalf("conn or recipient differ")
	}
	// No identity, no address: stays so.
	c := &pipeline.Conn{ID: "x"}
	if got := ConnFrom(wire(t, Conn(c))); !reflect.DeepEqual(c, got) {
		t.Fatalf("bare conn: %+v", got)
	}
}

func TestVerdictRoundTrip(t *testing.T) {
	for _, v := range []pipeline.Verdict{
		{},
		pipeline.RejectVerdict(554, pipeline.EnhancedCode{5, 7, 1}, "spam score 9.1"),
		pipeline.TempfailVerdict(0, pipeline.EnhancedCode{}, ""),
		pipeline.DiscardVerdict("quiet"),
		pipeline.RouteVerdict(&pipeline.Route{Kind: pipeline.RouteRelay, Host: "h", Port: 25}),
		{Action: pipeline.Continue, Edits: pipeline.Edits{
			Headers:     []pipeline.HeaderEdit{{Op: pipeline.HeaderAdd, Name: "X-Spam-Score", Value: "1.5"}, {Op: pipeline.HeaderRemove, Name: "X-Old"}},
			Meta:        map[string]string{"a": "1", "gone": ""},
			Tags:        []string{"scored"},
			AuthResults: []pipeline.AuthResult{{Method: "dkim", Result: "pass"}},
			Scratch:     map[string]string{"s": "1"},
			RequireTLS:  ptr(true),
		}},
		{Action: pipeline.Continue, Edits: pipeline.Edits{RequireTLS: ptr(false)}}, // clearing is an edit too
	} {
		got, err := VerdictFrom(wire(t, Verdict(v)))
		if err != nil || !reflect.DeepEqual(got, v) {
			t.Errorf("round trip of %+v: %+v %v", v, got, err)
		}
	}
}

func ptr[T any](v T) *T { return &v }

func TestVerdictFromRefuses(t *testing.T) {
	for _, p := range []*stagev1.Verdict{
		{Action: 9},
		{Action: stagev1.Action_ACTION_REJECT, Enhanced: []int32{5, 7}},
		{Action: stagev1.Action_ACTION_ACCEPT, Route: &stagev1.Route{Kind: "carrier-pigeon"}},
	} {
		if _, err := VerdictFrom(p); err == nil {
			t.Errorf("VerdictFrom(%v) accepted", p)
		}
	}
}

func TestMessageRoundTrip(t *testing.T) {
	raw := "Received: from a\r\n by b; Mon, 1 Jan 2026 00:00:00 +0000\r\nSubject: hi\r\nX-A: 1\r\n\r\nbody line\r\n"
	m, err := pipeline.ParseMessage(sampleTxn(), []byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	full, err := MessageFrom(wire(t, Message(m, stagev1.BodyNeed_BODY_NEED_FULL)))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := full.Bytes()
	if string(b) != raw {
		t.Fatalf("full message:\n%q\nwant\n%q", b, raw)
	}
	if !reflect.DeepEqual(full.Txn, m.Txn) {
		t.Fatalf("txn differs")
	}
	hdr := wire(t, Message(m, stagev1.BodyNeed_BODY_NEED_HEADERS))
	if !hdr.HasHeader || hdr.HasBody || len(hdr.Body) != 0 || len(hdr.Header) != 3 || hdr.Header[1].Name != "Subject" || hdr.Header[1].Value != "hi" {
		t.Fatalf("headers only: %v", hdr)
	}
	env := wire(t, Message(m, stagev1.BodyNeed_BODY_NEED_ENVELOPE))
	if env.HasHeader || env.HasBody || len(env.Header) != 0 || len(env.Body) != 0 || env.Txn.Id != "01HZ" {
		t.Fatalf("envelope only: %v", env)
	}
}

func TestEventRoundTrip(t *testing.T) {
	ev := &pipeline.Event{Schema: 1, EventID: "e", Type: pipeline.EventDelivered, Time: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		MessageID: "m", Recipient: "r@x.example", Response: &pipeline.Response{Code: 250, Enhanced: "2.0.0", Text: "ok"},
		Tags: []string{"a"}, Metadata: map[string]string{"k": "v"}, Size: 10}
	p, err := Event(ev)
	if err != nil {
		t.Fatal(err)
	}
	got, err := EventFrom(wire(t, p))
	if err != nil || !reflect.DeepEqual(got, ev) {
		t.Fatalf("event: %+v %v", got, err)
	}
}

func TestHookNames(t *testing.T) {
	for h := range stagev1.Hook_name {
		hk := stagev1.Hook(h)
		if hk == stagev1.Hook_HOOK_UNSPECIFIED {
			continue
		}
		if HookFromName(HookName(hk)) != hk {
			t.Errorf("hook %v does not round trip", hk)
		}
	}
}

// TestMessageBlockRoundTrip: the header as one block (protocol 1.2) comes
// back byte for byte, folding and order kept, with or without the body;
// HeaderFields turns the block into the fields Message sends.
func TestMessageBlockRoundTrip(t *testing.T) {
	raw := "Received: from a\r\n by b; Mon, 1 Jan 2026 00:00:00 +0000\r\nSubject: hi\r\nX-A: 1\r\n\r\nbody line\r\n"
	m, err := pipeline.ParseMessage(sampleTxn(), []byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	p, err := MessageBlock(m, stagev1.BodyNeed_BODY_NEED_FULL, &buf)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Header) != 0 || string(p.HeaderBlock) != raw[:strings.Index(raw, "body line")] {
		t.Fatalf("block %q, fields %v", p.HeaderBlock, p.Header)
	}
	full, err := MessageFrom(wire(t, p))
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := full.Bytes(); string(b) != raw || !reflect.DeepEqual(full.Txn, m.Txn) {
		t.Fatalf("full message:\n%q\nwant\n%q", b, raw)
	}
	hdr, err := MessageBlock(m, stagev1.BodyNeed_BODY_NEED_HEADERS, &buf)
	if err != nil {
		t.Fatal(err)
	}
	got, err := MessageFrom(wire(t, hdr))
	if err != nil || got.Header.Get("Subject") != "hi" || got.Header.Len() != 3 || len(got.Body) != 0 {
		t.Fatalf("headers only: %v %v", got, err)
	}
	fields, err := HeaderFields(hdr.HeaderBlock)
	if err != nil {
		t.Fatal(err)
	}
	if want := Message(m, stagev1.BodyNeed_BODY_NEED_HEADERS).Header; !reflect.DeepEqual(fields, want) {
		t.Fatalf("fields %v, want %v", fields, want)
	}
	if _, err := HeaderFields([]byte("X-A: 1\r\n\r\nnot a header\r\n")); err == nil {
		t.Fatal("a block with a body is taken")
	}
	env, err := MessageBlock(m, stagev1.BodyNeed_BODY_NEED_ENVELOPE, &buf)
	if err != nil || env.HasHeader || len(env.HeaderBlock) != 0 || len(env.Body) != 0 {
		t.Fatalf("envelope only: %v %v", env, err)
	}
	// An empty header is the empty line alone, and comes back empty.
	e, _ := pipeline.ParseMessage(sampleTxn(), []byte("\r\nbody\r\n"))
	eb, err := MessageBlock(e, stagev1.BodyNeed_BODY_NEED_FULL, &buf)
	if err != nil || string(eb.HeaderBlock) != "\r\n" {
		t.Fatalf("empty header: %q %v", eb.HeaderBlock, err)
	}
	if back, err := MessageFrom(wire(t, eb)); err != nil || back.Header.Len() != 0 || string(back.Body) != "body\r\n" {
		t.Fatalf("empty header back: %v %v", back, err)
	}
}

func BenchmarkMessageFromBlock(b *testing.B) {
	raw := "Received: from client.example (client.example [192.0.2.1]) by relay.example with ESMTP id abc;\r\n Mon, 30 Nov 2026 08:00:00 +0000\r\n" +
		"From: Alice <alice@origin.example>\r\nTo: Bob <bob@dest.example>\r\nSubject: quarterly report\r\n" +
		"Date: Mon, 30 Nov 2026 08:00:00 +0000\r\nMessage-ID: <1234@origin.example>\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\nX-Mailer: bench\r\nX-A: 1\r\nX-B: 2\r\nX-C: 3\r\n\r\n"
	p := &stagev1.Message{Txn: Txn(sampleTxn()), HasHeader: true, HeaderBlock: []byte(raw)}
	b.Run("ParseHeaderBlock", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := MessageFrom(p); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Unparsed", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := MessageFromUnparsed(p); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ParseMessage", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := pipeline.ParseMessage(TxnFrom(p.Txn), p.HeaderBlock); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestMessageFromSharedBuffer: a decoded request's header block and body
// may be slices of one buffer (sdk.Codec decodes without copying), the
// block's capacity reaching over the body. Joining the lines of the block
// that are not header fields with the body must not write over the body.
func TestMessageFromSharedBuffer(t *testing.T) {
	const wire = "Subject: hi\r\nnot a field\r\n" + "other fields" + "BODY-AFTER\r\n"
	buf := []byte(wire)
	block, body := buf[:26], buf[38:] // the block's capacity covers "other fields"
	m, err := MessageFrom(&stagev1.Message{HasHeader: true, HeaderBlock: block, HasBody: true, Body: body})
	if err != nil {
		t.Fatal(err)
	}
	if got := string(m.Body); got != "not a field\r\nBODY-AFTER\r\n" {
		t.Fatalf("body %q", got)
	}
	if got := string(buf); got != wire {
		t.Fatalf("the decoded buffer was written over: %q", got)
	}
}

// TestMessageBlockToReuse: MessageBlockTo into parts that held another
// message gives what MessageBlock gives, nothing left of the first (the
// stage pools the parts across calls).
func TestMessageBlockToReuse(t *testing.T) {
	first, err := pipeline.ParseMessage(sampleTxn(), []byte("Subject: one\r\nX-A: 1\r\n\r\nbody\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	second, err := pipeline.ParseMessage(&pipeline.Txn{ID: "t2"}, []byte("Subject: two\r\n\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	var parts MessageParts
	var buf bytes.Buffer
	if _, err := MessageBlockTo(&parts, first, stagev1.BodyNeed_BODY_NEED_FULL, &buf); err != nil {
		t.Fatal(err)
	}
	got, err := MessageBlockTo(&parts, second, stagev1.BodyNeed_BODY_NEED_HEADERS, &buf)
	if err != nil {
		t.Fatal(err)
	}
	want, err := MessageBlock(second, stagev1.BodyNeed_BODY_NEED_HEADERS, new(bytes.Buffer))
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, want) || got.Txn.Conn != nil || got.Txn.Sender != "" {
		t.Fatalf("reused parts: got %v, want %v", got, want)
	}
}

// TestMessageFromUnparsed: a well-formed block stays unparsed and reads
// and writes as MessageFrom's parsed message; a block that is not well
// formed, or a header sent as fields, is parsed as MessageFrom does.
func TestMessageFromUnparsed(t *testing.T) {
	for _, tc := range []struct {
		block    string
		unparsed bool
	}{
		{"Subject: hi\r\n there\r\nX-A: 1\r\nx-a: 2\r\n\r\n", true},
		{"Subject: hi\r\nnot a field\r\n", false},
	} {
		p := &stagev1.Message{Txn: Txn(sampleTxn()), HasHeader: true, HeaderBlock: []byte(tc.block), HasBody: true, Body: []byte("body\r\n")}
		want, err := MessageFrom(p)
		if err != nil {
			t.Fatal(err)
		}
		got, err := MessageFromUnparsed(p)
		if err != nil {
			t.Fatal(err)
		}
		if got.HeaderUnparsed() != tc.unparsed || got.Txn.ID != want.Txn.ID {
			t.Errorf("%q: unparsed %v, want %v", tc.block, got.HeaderUnparsed(), tc.unparsed)
		}
		for _, k := range []string{"subject", "X-A", "X-Missing"} {
			if g, w := got.HeaderValue(k), want.Header.Get(k); g != w {
				t.Errorf("%q: HeaderValue(%q) = %q, want %q", tc.block, k, g, w)
			}
		}
		gb, _ := got.Bytes()
		wb, _ := want.Bytes()
		if string(gb) != string(wb) {
			t.Errorf("%q: Bytes %q, want %q", tc.block, gb, wb)
		}
	}
	fields := Message(must(pipeline.ParseMessage(sampleTxn(), []byte("Subject: f\r\n\r\n"))), stagev1.BodyNeed_BODY_NEED_HEADERS)
	m, err := MessageFromUnparsed(fields)
	if err != nil || m.HeaderUnparsed() || m.Header.Get("Subject") != "f" {
		t.Fatalf("header as fields: %v %v", m, err)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// BenchmarkMessageBlock: the header block of a call (the relay's side),
// for a received message with the relay's Received field added (Add: it
// is formatted, and folded, at every write) or stored as written.
func BenchmarkMessageBlock(b *testing.B) {
	raw := "From: Alice <alice@origin.example>\r\nTo: Bob <bob@dest.example>\r\nSubject: quarterly report\r\n" +
		"Date: Mon, 30 Nov 2026 08:00:00 +0000\r\nMessage-ID: <1234@origin.example>\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\nX-Mailer: bench\r\nX-A: 1\r\nX-B: 2\r\nX-C: 3\r\n\r\nbody\r\n"
	const received = "from client.example (client.example [192.0.2.1]) by relay.example with ESMTP id 01JDXYZABCDEFGHJKMNPQRSTVW; Mon, 30 Nov 2026 08:00:00 +0000"
	for _, asWritten := range []bool{false, true} {
		m := must(pipeline.ParseMessage(sampleTxn(), []byte(raw)))
		if asWritten {
			var h textproto.Header
			h.Add("Received", received)
			f := h.Fields()
			f.Next()
			m.Header.AddRaw(must(f.Raw()))
		} else {
			m.Header.Add("Received", received)
		}
		b.Run(fmt.Sprint("received-as-written=", asWritten), func(b *testing.B) {
			var parts MessageParts
			var buf bytes.Buffer
			b.ReportAllocs()
			for b.Loop() {
				if _, err := MessageBlockTo(&parts, m, stagev1.BodyNeed_BODY_NEED_HEADERS, &buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
