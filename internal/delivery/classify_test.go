package delivery

import (
	"flag"
	"os"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/pipeline"
)

var update = flag.Bool("update", false, "rewrite the reply-code table in docs/delivery.md")

// TestClassify checks the rows of Rules that classify a reply.
func TestClassify(t *testing.T) {
	remote := pipeline.Remote{Host: "mx.test", IP: "192.0.2.1"}
	rep := func(code int, lines ...string) reply { return reply{code: code, lines: lines} }
	tests := []struct {
		name string
		cmd  string
		r    reply
		code int
		enh  string
		msg  string
	}{
		{"421 kept", "MAIL", rep(421, "4.7.0 closing"), 421, "4.7.0", "closing"},
		{"421 at greeting kept", "greeting", rep(421, "busy"), 421, "4.0.0", "busy"},
		{"MAIL 4xx", "MAIL", rep(451, "4.3.0 later"), 451, "4.3.0", "later"},
		{"MAIL 5xx", "MAIL", rep(553, "5.1.8 bad sender"), 553, "5.1.8", "bad sender"},
		{"RCPT 4xx", "RCPT", rep(450, "4.2.1 busy"), 450, "4.2.1", "busy"},
		{"RCPT 552 as 452", "RCPT", rep(552, "5.5.3 too many recipients"), 452, "4.5.3", "too many recipients"},
		{"RCPT 552 as 452, other detail kept", "RCPT", rep(552, "5.2.2 mailbox full"), 452, "4.2.2", "mailbox full"},
		{"RCPT 552 as 452, no enhanced code", "RCPT", rep(552, "too many"), 452, "4.5.3", "too many"},
		{"RCPT 5xx", "RCPT", rep(550, "5.1.1 no such user"), 550, "5.1.1", "no such user"},
		{"DATA 552 stays", "DATA", rep(552, "5.3.4 too big"), 552, "5.3.4", "too big"},
		{"end of data 552 stays", "end of data", rep(552, "5.3.4 too big"), 552, "5.3.4", "too big"},
		{"end of data 5xx", "end of data", rep(554, "5.7.1 spam"), 554, "5.7.1", "spam"},
		{"no enhanced code: X.0.0", "RCPT", rep(550, "unknown"), 550, "5.0.0", "unknown"},
		{"enhanced code of the wrong class ignored", "RCPT", rep(550, "4.1.1 odd"), 550, "5.0.0", "4.1.1 odd"},
		{"multi-line", "end of data", rep(554, "5.7.1 line one", "5.7.1 line two"), 554, "5.7.1", "line one line two"},
		{"no text", "MAIL", rep(550), 550, "5.0.0", "MAIL rejected"},
		{"unexpected class", "STARTTLS", rep(250, "ok"), 451, "4.5.0", "unexpected reply to STARTTLS: 250 ok"},
		{"3xx", "RCPT", rep(354, "go ahead"), 451, "4.5.0", "unexpected reply to RCPT: 354 go ahead"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := classify(tt.r, tt.cmd, remote)
			if e.Code != tt.code || e.Enhanced.String() != tt.enh || e.Message != tt.msg {
				t.Fatalf("classify = %d %s %q, want %d %s %q", e.Code, e.Enhanced, e.Message, tt.code, tt.enh, tt.msg)
			}
			if pipeline.IsTemporary(e) != (tt.code/100 == 4) {
				t.Fatalf("IsTemporary = %v for %d", pipeline.IsTemporary(e), tt.code)
			}
			re, ok := e.Cause.(*ReplyError)
			if !ok || re.Code != tt.r.code || re.Command != tt.cmd || re.Remote != remote {
				t.Fatalf("cause = %#v: the reply as received is lost", e.Cause)
			}
			if resp := pipeline.ResponseOf(e); resp.Code != tt.code || resp.Enhanced != tt.enh {
				t.Fatalf("event response = %+v", resp)
			}
		})
	}
	for _, r := range Rules {
		if r.Phase == "" || r.Reply == "" || r.Recorded == "" || r.Class == "" || r.Effect == "" || strings.Contains(r.Effect+r.Reply+r.Recorded, "|") {
			t.Errorf("incomplete or unprintable row %+v", r)
		}
	}
}

// TestReplyTableDoc keeps docs/delivery.md's table equal to Rules; run
// with -update to rewrite it.
func TestReplyTableDoc(t *testing.T) {
	const path = "../../docs/replies.md"
	const begin, end = "<!-- reply table: begin (generated from delivery.Rules) -->\n", "<!-- reply table: end -->\n"
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	i, j := strings.Index(doc, begin), strings.Index(doc, end)
	if i < 0 || j < i {
		t.Fatalf("%s lacks the table markers", path)
	}
	want := doc[:i+len(begin)] + markdownRules() + doc[j:]
	if want == doc {
		return
	}
	if *update {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatalf("%s is out of date with delivery.Rules; run go test ./internal/delivery -run TestReplyTableDoc -update", path)
}
