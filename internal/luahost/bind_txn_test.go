package luahost

import (
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/pipeline"
)

func TestTxnFieldsAndMail(t *testing.T) {
	st, _, _ := inline(t, `on_mail = function(txn, sender)
    assert(sender == txn.sender and sender == "alice@example.com")
    assert(txn.id == "01JTEST")
    assert(#txn.recipients == 1 and txn.recipients[1] == "bob@example.org")
    assert(txn.conn.ip == "192.0.2.7" and txn.conn == txn.conn)
    assert(tostring(txn) == "txn")
    if txn.conn.helo == "bad" then return sluice.reject(550, "5.7.1", "bad") end
    return sluice.accept()
  end`)
	txn := testTxn()
	v, err := st.(pipeline.MailHook).OnMail(bg, txn)
	if err != nil || v.Action != pipeline.Accept {
		t.Fatalf("%+v %v", v, err)
	}
	txn.Conn.HELO = "bad"
	v, err = st.(pipeline.MailHook).OnMail(bg, txn)
	if err != nil || v.Action != pipeline.Reject {
		t.Fatalf("%+v %v", v, err)
	}
}

func TestMetaAndTags(t *testing.T) {
	st, _, _ := inline(t, `on_rcpt = function(txn, rcpt)
    assert(txn:get_meta("missing") == nil)
    txn:set_meta("order", "1234")
    txn:set_meta("n", 42)
    txn:set_meta("flag", true)
    txn:set_meta("gone", "x")
    txn:set_meta("gone", nil)
    txn:set_meta("empty", "x")
    txn:set_meta("empty", "")
    assert(txn:get_meta("order") == "1234")
    local m = txn:meta()
    assert(m.order == "1234" and m.n == "42" and m.flag == "true" and m.gone == nil)
    m.order = "changed"   -- a copy
    txn:tag("invoice")
    txn:tag("invoice")
    txn:tag("vip")
    local tags = txn:tags()
    assert(#tags == 3 and tags[1] == "pre" and tags[2] == "invoice" and tags[3] == "vip")
  end`)
	txn := testTxn()
	txn.Tags = []string{"pre"}
	if _, err := rcptApplied(st, txn, rcpt(t, "a@example.org")); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"order": "1234", "n": "42", "flag": "true"}
	if len(txn.Meta) != len(want) {
		t.Fatalf("meta %v", txn.Meta)
	}
	for k, v := range want {
		if txn.Meta[k] != v {
			t.Fatalf("meta %v", txn.Meta)
		}
	}
	if strings.Join(txn.Tags, ",") != "pre,invoice,vip" {
		t.Fatalf("tags %v", txn.Tags)
	}
}

func TestMessageHeaders(t *testing.T) {
	st, _, _ := inline(t, `on_message = function(msg)
    assert(msg:header("subject") == "hi")
    assert(msg:header("X-Missing") == nil)
    local r = msg:headers("Received")
    assert(#r == 2 and r[1] == "one" and r[2] == "two", "received order")
    assert(#msg:headers("X-None") == 0)
    msg:add_header("X-Spam-Score", "1.5")
    msg:add_header("X-Spam-Score", 2)
    assert(msg:header("x-spam-score") == "2", "add_header prepends")
    assert(msg:remove_header("Received") == 2)
    assert(msg:remove_header("Received") == 0)
    msg:set_header("Subject", "[ext] hi")
    assert(#msg:headers("Subject") == 1)
    assert(msg.id == "01JTEST" and msg.sender == "alice@example.com" and msg.recipients[1] == "bob@example.org")
    msg:set_meta("k", "v")
    msg:tag("t")
    assert(msg.size > 0)
  end`)
	msg := testMsg(t)
	if _, err := messageApplied(st, msg); err != nil {
		t.Fatal(err)
	}
	if got := msg.Header.Values("X-Spam-Score"); len(got) != 2 || got[0] != "2" || got[1] != "1.5" {
		t.Fatalf("X-Spam-Score %v", got)
	}
	if msg.Header.Has("Received") || msg.Header.Get("Subject") != "[ext] hi" {
		t.Fatal("remove/set not visible in Go")
	}
	if msg.Meta["k"] != "v" || msg.Tags[0] != "t" {
		t.Fatal("meta/tags of msg not visible in Go")
	}
	b, err := msg.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	want := "Subject: [ext] hi\r\nX-Spam-Score: 2\r\nX-Spam-Score: 1.5\r\nFrom: alice@example.com\r\nTo: bob@example.org\r\n\r\nbody\r\n"
	if string(b) != want {
		t.Fatalf("bytes:\n%q\nwant\n%q", b, want)
	}
}

func TestMessageSize(t *testing.T) {
	st, _, _ := inline(t, `on_message = function(msg)
    local before = msg.size
    msg:add_header("X-A", "b")
    return sluice.reject(550, "5.7.1", before .. " " .. msg.size)
  end`)
	msg := testMsg(t)
	raw, _ := msg.Bytes()
	v, err := st.(pipeline.MessageHook).OnMessage(bg, msg)
	if err != nil {
		t.Fatal(err)
	}
	msg.Header.Add("X-A", "b") // what the chain applies for the hook's edit
	after, _ := msg.Bytes()
	if want := strings.Join([]string{itoa(len(raw)), itoa(len(after))}, " "); v.Text != want {
		t.Fatalf("sizes %q, want %q", v.Text, want)
	}
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

func TestMessageErrors(t *testing.T) {
	for _, tt := range []struct{ body, want string }{
		{`msg:add_header("X-Evil", "a\r\nBcc: victim@example.org")`, "add_header: the value of X-Evil must not contain CR, LF or NUL"},
		{`msg:add_header("X-Evil", "a\nb")`, "must not contain CR, LF or NUL"},
		{`msg:add_header("X-Evil\r\nBcc", "a")`, `add_header: invalid header field name "X-Evil\r\nBcc"`},
		{`msg:add_header("Bad Name", "a")`, "invalid header field name"},
		{`msg:add_header("Bad:Name", "a")`, "invalid header field name"},
		{`msg:add_header("X-" .. string.rep("n", 72), "0")`, "add_header: header field name X-nnnnnnnn... too long: 74 characters, at most 73"},
		{`msg:add_header("X-Big", string.rep("ab ", 30000))`, "add_header: the value of X-Big is too long: 90000 bytes, at most 65536"},
		{`msg:add_header("X-Token", "t=" .. string.rep("A", 1200))`, "add_header: the value of header field X-Token cannot be folded into lines of at most 998 characters (RFC 5322 section 2.1.1): the 1202 characters without a space or tab from byte 0 do not fit on one line"},
		{`msg:set_header("X-Token", "a " .. string.rep("A", 998))`, "set_header: the value of header field X-Token cannot be folded"},
		{`msg:set_header(string.rep("n", 100), "0")`, "set_header: header field name nnnnnnnnnn... too long: 100 characters, at most 73"},
		{`msg:add_header("", "a")`, "add_header: argument 1 must be a non-empty string"},
		{`msg:add_header("X-A")`, "add_header: the value must be a string, got nil"},
		{`msg:set_header("X-A", "a\rb")`, "set_header: the value of X-A must not contain CR"},
		{`msg.add_header("X-A", "b")`, "add_header: call it as a method, with a colon"},
		{`msg:header(nil)`, "header: argument 1 must be a non-empty string"},
		{`msg:set_meta("k", {})`, "set_meta: the value must be a string, number, boolean or nil, got a table"},
		{`msg:set_meta("", "v")`, "set_meta: argument 1 must be a non-empty string"},
		{`msg:tag("a\nb")`, "tag: a tag must not contain CR, LF or NUL"},
		{`return msg.sendr`, `msg has no field "sendr"`},
		{`msg.sender = "x"`, `msg.sender is read-only`},
	} {
		t.Run(tt.body, func(t *testing.T) {
			st, _, _ := inline(t, "on_message = function(msg)\n  "+tt.body+"\nend")
			msg := testMsg(t)
			_, err := st.(pipeline.MessageHook).OnMessage(bg, msg)
			wantErrContains(t, err, "pipeline.lua:4", tt.want)
			if msg.Header.Has("X-Evil") || msg.Header.Has("Bcc") {
				t.Fatal("a rejected header reached the message")
			}
		})
	}
}

// TestTxnHeaderEditsWait: a header edit at on_rcpt waits on the txn and is
// applied, before on_message, when the content arrives; reading headers
// needs the message.
func TestTxnHeaderEditsWait(t *testing.T) {
	st, _, _ := inline(t, "on_rcpt = function(txn, rcpt)\n  txn:add_header(\"X-A\", \"b\")\nend")
	txn := testTxn()
	if _, err := rcptApplied(st, txn, rcpt(t, "a@example.org")); err != nil {
		t.Fatal(err)
	}
	ch, err := pipeline.Compile(nil, pipeline.ChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := pipeline.ParseMessage(txn, []byte("Subject: x\r\n\r\nbody\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ch.Message(bg, msg); err != nil || msg.Header.Get("X-A") != "b" {
		t.Fatalf("X-A %q, err %v", msg.Header.Get("X-A"), err)
	}
	st2, _, _ := inline(t, "on_rcpt = function(txn, rcpt)\n  txn:header(\"X-A\")\nend")
	_, err = rcptHook(t, st2).OnRcpt(bg, testTxn(), rcpt(t, "a@example.org"))
	wantErrContains(t, err, `txn has no field "header"`)
}
