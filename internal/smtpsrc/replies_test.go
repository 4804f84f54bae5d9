package smtpsrc

import (
	"os"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/pipeline"
)

// TestReplyTableMatchesCode: every row of docs/replies.md's SMTP table that
// names a Go value says that value's code and enhanced code, and every
// reply value the receiving side uses is in the table.
func TestReplyTableMatchesCode(t *testing.T) {
	values := map[string]*pipeline.Error{
		"errTooManyConns":              errTooManyConns,
		"errTooManyFromIP":             errTooManyFromIP,
		"errInflightFull":              errInflightFull,
		"errShuttingDown":              errShuttingDown,
		"errDataTimeout":               errDataTimeout,
		"errNeedSMTPUTF8":              errNeedSMTPUTF8,
		"errPoisoned":                  errPoisoned,
		"errBadSequence":               errBadSequence,
		"errNUL":                       errNUL,
		"errLineTooLong":               errLineTooLong,
		"errTooManyHops":               errTooManyHops,
		"errEncryptionRequired":        errEncryptionRequired,
		"errTooManyAuth":               errTooManyAuth,
		"errAuthRequired":              errAuthRequired,
		"pipeline.ErrRoutingLocalPart": pipeline.ErrRoutingLocalPart,
		"pipeline.ErrRelayDenied":      pipeline.ErrRelayDenied,
		"pipeline.ErrTooManyRcpts":     pipeline.ErrTooManyRcpts,
		"pipeline.ErrTooBig":           pipeline.ErrTooBig,
		"pipeline.ErrBareLineEnding":   pipeline.ErrBareLineEnding,
		"pipeline.ErrInternal":         pipeline.ErrInternal,
		"pipeline.ErrStageTimeout":     pipeline.ErrStageTimeout,
		"pipeline.ErrSpoolFull":        pipeline.ErrSpoolFull,
	}
	b, err := os.ReadFile("../../docs/replies.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	i := strings.Index(doc, "## What Sluice answers over SMTP")
	j := strings.Index(doc, "## What the HTTP API answers")
	if i < 0 || j < i {
		t.Fatal("docs/replies.md lacks its SMTP table")
	}
	seen := map[string]bool{}
	rows := 0
	for _, line := range strings.Split(doc[i:j], "\n") {
		cells := strings.Split(line, "|")
		if len(cells) != 8 || strings.TrimSpace(cells[1]) == "code" || strings.HasPrefix(strings.TrimSpace(cells[1]), "---") {
			continue
		}
		rows++
		code, enh := strings.TrimSpace(cells[1]), strings.TrimSpace(cells[2])
		name := strings.Trim(strings.TrimSpace(cells[6]), "`")
		if name == "-" {
			continue
		}
		v, ok := values[name]
		if !ok {
			t.Errorf("the table names %s, which this test does not know", name)
			continue
		}
		seen[name] = true
		if got := strings.TrimSpace(itoa3(v.Code)); got != code || v.EnhancedOrDefault().String() != enh {
			t.Errorf("%s is %d %s; the table says %s %s", name, v.Code, v.EnhancedOrDefault(), code, enh)
		}
		// Every reply is allowed at the commands the table names
		// (RFC 5321 section 4.3.2): no 554 at MAIL or RCPT.
		if v.Code == 554 && (strings.Contains(cells[4], "MAIL") || strings.Contains(cells[4], "RCPT")) {
			t.Errorf("%s answers 554 at %s", name, cells[4])
		}
	}
	if rows < 20 {
		t.Fatalf("only %d rows read from the table", rows)
	}
	for name := range values {
		if !seen[name] {
			t.Errorf("%s is not in docs/replies.md", name)
		}
	}
}

func itoa3(n int) string {
	return string([]byte{byte('0' + n/100), byte('0' + n/10%10), byte('0' + n%10)})
}
