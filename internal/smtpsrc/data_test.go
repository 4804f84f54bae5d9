package smtpsrc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/pipeline"
)

func TestScanData(t *testing.T) {
	for _, tc := range []struct {
		in       string
		bare     bool
		nul      bool
		longest  int
		wantNorm string
	}{
		{in: "", wantNorm: ""},
		{in: "abc", longest: 5, wantNorm: "abc"},
		{in: "a\r\nb\r\n", longest: 3, wantNorm: "a\r\nb\r\n"},
		{in: "\n", bare: true, longest: 1, wantNorm: "\r\n"},
		{in: "\r", bare: true, longest: 3, wantNorm: "\r\n"},
		{in: "a\nb", bare: true, longest: 3, wantNorm: "a\r\nb"},
		{in: "a\rb\r\n", bare: true, longest: 5, wantNorm: "a\r\nb\r\n"},
		{in: "\r\r\n", bare: true, longest: 3, wantNorm: "\r\n\r\n"},
		{in: "\r\n\n\r", bare: true, longest: 3, wantNorm: "\r\n\r\n\r\n"},
		{in: "x\r\n\x00.\r\n", nul: true, longest: 4, wantNorm: "x\r\n\x00.\r\n"},
		{in: "\n.\r\n", bare: true, longest: 3, wantNorm: "\r\n.\r\n"},
		{in: "long line\r\nx", longest: 11, wantNorm: "long line\r\nx"},
	} {
		bare, nul, longest := scanData([]byte(tc.in))
		if bare != tc.bare || nul != tc.nul || longest != tc.longest {
			t.Errorf("scanData(%q) = %v, %v, %d; want %v, %v, %d", tc.in, bare, nul, longest, tc.bare, tc.nul, tc.longest)
		}
		if got := string(normalizeLineEndings(nil, []byte(tc.in))); got != tc.wantNorm {
			t.Errorf("normalize(%q) = %q, want %q", tc.in, got, tc.wantNorm)
		}
	}
}

// refScan is the obvious byte-by-byte definition scanData must agree with.
func refScan(d []byte) (bare, nul bool, longest int) {
	line := 0
	for i, c := range d {
		line++
		switch c {
		case 0:
			nul = true
		case '\r':
			if i+1 >= len(d) || d[i+1] != '\n' {
				bare = true
			}
		case '\n':
			if i == 0 || d[i-1] != '\r' {
				bare = true
			}
			longest = max(longest, line)
			line = 0
		}
	}
	if line > 0 {
		longest = max(longest, line+2)
	}
	return
}

func refNormalize(d []byte) []byte {
	var out []byte
	for i := 0; i < len(d); i++ {
		switch {
		case d[i] == '\r' && i+1 < len(d) && d[i+1] == '\n':
			out = append(out, '\r', '\n')
			i++
		case d[i] == '\r' || d[i] == '\n':
			out = append(out, '\r', '\n')
		default:
			out = append(out, d[i])
		}
	}
	return out
}

func stripCRLF(d []byte) []byte {
	return bytes.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return -1
		}
		return r
	}, d)
}

// FuzzData checks the bare-line-ending scanner and normaliser against
// their byte-by-byte definitions, and the normaliser's guarantees: its
// output has no bare CR or LF, changes nothing but line endings, and is
// the identity on clean data. Seeds: testdata/fuzz/FuzzData.
func FuzzData(f *testing.F) {
	for _, tc := range smugglingCases {
		f.Add([]byte("Subject: x\r\n\r\nHello" + tc.seq + "MAIL FROM:<e@x>\r\n"))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		bare, nul, longest := scanData(data)
		rb, rn, rl := refScan(data)
		if bare != rb || nul != rn || longest != rl {
			t.Fatalf("scanData(%q) = %v,%v,%d; reference %v,%v,%d", data, bare, nul, longest, rb, rn, rl)
		}
		norm := normalizeLineEndings(nil, data)
		if want := refNormalize(data); !bytes.Equal(norm, want) {
			t.Fatalf("normalize(%q) = %q, reference %q", data, norm, want)
		}
		if b, n, _ := scanData(norm); b || n != nul {
			t.Fatalf("normalize(%q) = %q still has bare line endings (or changed NULs)", data, norm)
		}
		if !bytes.Equal(stripCRLF(norm), stripCRLF(data)) {
			t.Fatalf("normalize(%q) = %q changed more than line endings", data, norm)
		}
		if !bare && !bytes.Equal(norm, data) {
			t.Fatalf("normalize changed clean data %q to %q", data, norm)
		}
		// Appending to a non-empty dst keeps the prefix.
		if got := normalizeLineEndings([]byte("P"), data); !bytes.Equal(got, append([]byte("P"), norm...)) {
			t.Fatalf("normalize with a dst prefix: %q", got)
		}
	})
}

func TestReadData(t *testing.T) {
	b := &budget{}
	check := func(name, in string, limit, hint int64, want string, wantErr error) {
		t.Helper()
		buf := getBuf()
		data, charged, err := readData(buf, strings.NewReader(in), limit, hint, b)
		b.release(charged)
		if !errors.Is(err, wantErr) || (wantErr == nil && string(data) != want) {
			t.Errorf("%s: %v %q", name, err, data)
		}
		if wantErr == nil && charged != int64(cap(data)) {
			t.Errorf("%s: charged %d for a buffer of %d", name, charged, cap(data))
		}
		putBuf(data)
	}
	check("at the limit", "12345", 5, 0, "12345", nil)
	check("over the limit", "123456", 5, 0, "", pipeline.ErrTooBig)
	check("no limit", "123456", 0, 0, "123456", nil)
	big := strings.Repeat("x", 3*minBuf+7)
	check("grown", big, 0, 0, big, nil)
	check("hinted", big, 0, int64(len(big)), big, nil)
	check("over the limit, grown", big, int64(2*minBuf), 0, "", pipeline.ErrTooBig)
	if n := b.inUse(); n != 0 {
		t.Errorf("budget still holds %d bytes", n)
	}
}

// TestReadDataBudget: the in-flight budget is charged by buffer capacity
// as the message grows (old and new buffer while growing), released by the
// caller, and a message that does not fit stops with errOverBudget; a
// SIZE= hint sizes the buffer at once (no regrowth).
func TestReadDataBudget(t *testing.T) {
	msg := strings.Repeat("y", 1<<20)
	b := &budget{limit: 3 << 20}
	data, charged, err := readData(nil, strings.NewReader(msg), 0, 0, b)
	if err != nil || len(data) != len(msg) {
		t.Fatalf("1 MiB in a 3 MiB budget: %v", err)
	}
	if charged < int64(len(msg)) || charged > 2*int64(len(msg))+minBuf || b.inUse() != charged {
		t.Errorf("charged %d (in use %d) for %d bytes", charged, b.inUse(), len(msg))
	}
	// A second, larger message does not fit with the first still held.
	data2, charged2, err := readData(nil, strings.NewReader(msg+msg), 0, 0, b)
	if !errors.Is(err, errOverBudget) {
		t.Errorf("2 MiB more in a 3 MiB budget holding %d: %v (%d bytes)", charged, err, len(data2))
	}
	b.release(charged2)
	b.release(charged)
	if b.inUse() != 0 {
		t.Fatalf("budget holds %d after release", b.inUse())
	}
	// With SIZE= the buffer is allocated once, at the declared size.
	data, charged, err = readData(nil, strings.NewReader(msg), 0, int64(len(msg)), b)
	if err != nil || string(data) != msg || charged != int64(len(msg))+sizeSlack {
		t.Errorf("hinted: err %v, charged %d for %d", err, charged, len(msg))
	}
	b.release(charged)
	// A SIZE= over the budget is refused before anything is read.
	r := strings.NewReader(msg)
	_, charged, err = readData(nil, r, 0, 8<<20, b)
	if !errors.Is(err, errOverBudget) || r.Len() != len(msg) {
		t.Errorf("SIZE over the budget: %v, %d bytes read", err, len(msg)-r.Len())
	}
	b.release(charged)
	if b.inUse() != 0 {
		t.Errorf("budget holds %d at the end", b.inUse())
	}
}

func TestSMTPErrorBoundary(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"pipeline error passes", pipeline.ErrRelayDenied, "550 5.7.1 Relay access denied"},
		{"cause dropped", &pipeline.Error{Code: 550, Enhanced: pipeline.EnhancedCode{5, 1, 1}, Message: "No such user", Cause: errors.New("secret")}, "550 5.1.1 No such user"},
		{"wrapped", fmt.Errorf("ctx: %w", pipeline.ErrTooBig), "552 5.3.4 Message size exceeds the limit"},
		{"unknown is generic temp", errors.New("open /etc/secret: permission denied"), "451 4.3.0 Internal error, try again later"},
		{"deadline", context.DeadlineExceeded, "451 4.4.5 Policy check timed out, try again later"},
		{"wrapped deadline", fmt.Errorf("lua: %w", context.DeadlineExceeded), "451 4.4.5 Policy check timed out, try again later"},
		{"cancelled", context.Canceled, "451 4.3.0 Internal error, try again later"},
		{"enhanced derived", &pipeline.Error{Code: 554, Message: "No"}, "554 5.0.0 No"},
		{"class mismatch fixed", &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{5, 7, 1}, Message: "Later"}, "451 4.0.0 Later"},
		{"2xx is not an error", &pipeline.Error{Code: 250, Message: "OK"}, "451 4.3.0 Internal error, try again later"},
		{"6xx is not a reply", &pipeline.Error{Code: 699, Message: "x"}, "451 4.3.0 Internal error, try again later"},
		{"control chars", &pipeline.Error{Code: 550, Enhanced: pipeline.EnhancedCode{5, 7, 1}, Message: "a\r\n250 2.0.0 fake\x00"}, "550 5.7.1 a 250 2.0.0 fake"},
		{"empty text 5xx", &pipeline.Error{Code: 550}, "550 5.0.0 Transaction failed"},
		{"empty text 4xx", &pipeline.Error{Code: 450}, "450 4.0.0 Temporary failure, try again later"},
		{"nil", nil, "451 4.3.0 Internal error, try again later"},
		{"verdict", pipeline.TempfailVerdict(0, pipeline.EnhancedCode{}, "").Err("s"), "451 4.7.1 Temporarily rejected by policy, try again later"},
	} {
		e := smtpError(tc.err)
		got := fmt.Sprintf("%d %d.%d.%d %s", e.Code, e.EnhancedCode[0], e.EnhancedCode[1], e.EnhancedCode[2], e.Message)
		if got != tc.want {
			t.Errorf("%s: smtpError = %q, want %q", tc.name, got, tc.want)
		}
	}
	long := smtpError(&pipeline.Error{Code: 550, Message: strings.Repeat("é", 300)})
	if len(long.Message) > maxReplyText || !strings.HasPrefix(long.Message, "éé") || strings.ContainsRune(long.Message, '\uFFFD') {
		t.Errorf("long text cut badly: %d bytes", len(long.Message))
	}
	if ok := okReply("X1"); ok.Code != 250 || ok.EnhancedCode != (smtp.EnhancedCode{2, 0, 0}) || ok.Message != "OK: queued as X1" {
		t.Errorf("okReply: %+v", ok)
	}
}

func TestNewIDSortable(t *testing.T) {
	ids := make([]string, 10000)
	for i := range ids {
		ids[i] = NewID()
	}
	if !sort.StringsAreSorted(ids) {
		t.Error("ids are not in creation order")
	}
	seen := map[string]bool{}
	for _, id := range ids {
		if len(id) != 26 || seen[id] {
			t.Fatalf("bad or duplicate id %q", id)
		}
		seen[id] = true
	}
}
