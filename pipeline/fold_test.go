package pipeline

import (
	"bufio"
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/emersion/go-message/textproto"
)

// checkFolded checks the folded field raw of name: value (trimmed of end
// blanks: want): CRLF lines, none longer than 998 (and none over 78 that
// could have ended at a clean blank), none blank-only, continuations
// starting with a blank; RFC 5322 unfolding (removing the CRLFs) gives
// "name: want"; go-message's reader gives want when every fold is at a
// single space between other characters (or right after the colon).
func checkFolded(t *testing.T, raw []byte, name, value string) {
	t.Helper()
	want := strings.Trim(value, " \t")
	s := string(raw)
	if !strings.HasSuffix(s, "\r\n") {
		t.Fatalf("%q: no final CRLF", s)
	}
	lines := strings.Split(strings.TrimSuffix(s, "\r\n"), "\r\n")
	clean := true
	for i, l := range lines {
		if len(l) > MaxHeaderLine {
			t.Errorf("line %d: %d characters", i, len(l))
		}
		if strings.ContainsAny(l, "\r\n") {
			t.Errorf("line %d: %q: a bare CR or LF", i, l)
		}
		if i == 0 {
			continue
		}
		if l == "" || !isBlank(l[0]) || strings.Trim(l, " \t") == "" {
			t.Errorf("line %d: %q: not a continuation with text", i, l)
		}
		prev := lines[i-1]
		if !(prev[len(prev)-1] == ':' && i == 1 || !isBlank(prev[len(prev)-1]) && l[0] == ' ' && len(l) > 1 && !isBlank(l[1])) {
			clean = false
		}
	}
	if got, w := strings.ReplaceAll(s, "\r\n", ""), name+": "+want; got != w {
		t.Errorf("unfolded %q, want %q", got, w)
	}
	h, err := textproto.ReadHeader(bufio.NewReader(strings.NewReader(s + "\r\n")))
	if err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	if got := h.Get(name); clean && got != want {
		t.Errorf("go-message reads %q, want %q (%q)", got, want, s)
	}
}

func TestFoldField(t *testing.T) {
	w := func(n int) string { return strings.Repeat("w", n) }
	for _, c := range []struct {
		name, value, want string // want "" is checked by checkFolded only
	}{
		{"X-A", "v", "X-A: v\r\n"},
		{"X-A", "", "X-A: \r\n"},
		{"X-A", " \t ", "X-A: \r\n"},
		{"X-A", "  padded\t ", "X-A: padded\r\n"},
		{"X-A", "a\tb  c", "X-A: a\tb  c\r\n"},
		{"Received", benchReceived, "Received: from client.example (client.example [192.0.2.1]) by relay.example\r\n with ESMTP id 01JDXYZABCDEFGHJKMNPQRSTVW; Mon, 30 Nov 2026 08:00:00 +0000\r\n"},
		// Runs of blanks are not folded at while there is a single space.
		{"X-A", strings.Repeat("ab  ", 20) + "end " + strings.Repeat("cd  ", 20), "X-A: " + strings.Repeat("ab  ", 19) + "ab  end\r\n " + strings.TrimSpace(strings.Repeat("cd  ", 20)) + "\r\n"},
		// No single space: one long line up to 998 rather than a fold at a tab or a double space.
		{"X-A", strings.Repeat("ab  ", 40), "X-A: " + strings.TrimSpace(strings.Repeat("ab  ", 40)) + "\r\n"},
		{"X-A", strings.Repeat("ab\t", 60), "X-A: " + strings.TrimSpace(strings.Repeat("ab\t", 60)) + "\r\n"},
		// Past 998 with only tabs: folded before the last tab that fits.
		{"X-A", strings.Repeat("abcdefghi\t", 200), ""},
		{"X-A", strings.Repeat("ab  ", 400), ""},
		// A word longer than 78: alone on its line.
		{"X-A", "a " + w(100) + " b", "X-A: a\r\n " + w(100) + "\r\n b\r\n"},
		// The 998 boundary: a first line of exactly 998, a continuation of 998.
		{"X-A", w(993), "X-A: " + w(993) + "\r\n"},
		{"X-A", "a " + w(997), "X-A: a\r\n " + w(997) + "\r\n"},
		// A first word that does not fit after the name: folded after the colon.
		{"X-A", w(994), "X-A:\r\n " + w(994) + "\r\n"},
		{"X-A", w(997) + " b", "X-A:\r\n " + w(997) + "\r\n b\r\n"},
		// UTF-8 is bytes to the folder; folds only at its blanks.
		{"X-Utf8", strings.Repeat("héllo wörld ", 20), ""},
		{"X-Utf8", strings.Repeat("日本語", 100) + " " + strings.Repeat("€", 300), ""},
	} {
		raw, err := FoldField(c.name, c.value)
		if err != nil {
			t.Errorf("%q: %.60q: %v", c.name, c.value, err)
			continue
		}
		if c.want != "" && string(raw) != c.want {
			t.Errorf("%q: %.60q:\n got %q\nwant %q", c.name, c.value, raw, c.want)
		}
		checkFolded(t, raw, c.name, c.value)
	}
}

// TestFoldFieldRefused: a run too long for any line is a *FoldError that
// names the field and where the run starts; FoldField refuses bad names
// and line breaks.
func TestFoldFieldRefused(t *testing.T) {
	w := func(n int) string { return strings.Repeat("w", n) }
	for _, c := range []struct {
		value             string
		offset, run, blks int
	}{
		{w(998), 0, 998, 0},
		{"  " + w(2000), 2, 2000, 0},
		{"a " + w(998), 2, 998, 1},
		{"a b c " + w(998) + " d", 6, 998, 1},
		// 1500 blanks between two long words: no line can take the blanks.
		{w(900) + strings.Repeat(" ", 1500) + w(900), 2400, 900, 2},
	} {
		_, err := FoldField("X-Big", c.value)
		var fe *FoldError
		if !errors.As(err, &fe) {
			t.Errorf("%.40q: err %v, want a FoldError", c.value, err)
			continue
		}
		if fe.Field != "X-Big" || fe.Offset != c.offset || fe.Run != c.run || (c.blks <= 1) != (fe.Blanks <= 1) {
			t.Errorf("%.40q: %+v, want offset %d, run %d", c.value, fe, c.offset, c.run)
		}
		if !strings.Contains(err.Error(), "X-Big") || !strings.Contains(err.Error(), "998") {
			t.Errorf("error %q does not name the field and the limit", err)
		}
		if CheckFold("X-Big", c.value) == nil {
			t.Errorf("%.40q: CheckFold accepts it", c.value)
		}
	}
	for _, c := range []struct{ name, value string }{{"Bad Name", "v"}, {"X-A:", "v"}, {"", "v"}, {"X-A", "a\r\nb"}, {"X-A", "a\nb"}} {
		if _, err := FoldField(c.name, c.value); err == nil {
			t.Errorf("%q: %q: folded", c.name, c.value)
		}
	}
}

// TestFoldFieldFeasible: when folding by preference gets stuck (long
// blanks runs around long words), FoldField still finds a folding if one
// exists.
func TestFoldFieldFeasible(t *testing.T) {
	// By preference the first line takes "ab", the tab, the c's and as
	// many blanks as fit, leaving too many for the line of the d's; the
	// folding that fits breaks at the tab first, so the second line can
	// take 7 blanks more.
	v := "ab\t" + strings.Repeat("c", 400) + strings.Repeat(" ", 1190) + strings.Repeat("d", 400)
	if f := newFolder("X-A", v); func() bool { _, s := f.lines(nil, len(f.v)+1); return s != done }() == false {
		t.Fatal("folding by preference alone fits: the test no longer tests the fallback")
	}
	raw, err := FoldField("X-A", v)
	if err != nil {
		t.Fatal(err)
	}
	checkFolded(t, raw, "X-A", v)
}

// foldableBrute reports whether name: v (trimmed) folds within the
// folder's limits, trying every fold point (quadratic; small values).
func foldableBrute(f folder) bool {
	n := len(f.v) + 1
	memo := map[int]bool{}
	var from func(s int) bool
	from = func(s int) bool {
		if r, ok := memo[s]; ok {
			return r
		}
		r := f.width(s, n) <= f.max
		text := s < 0
		for q := max(s+1, 0); !r && q < n && f.width(s, q) <= f.max; q++ {
			if !isBlank(f.at(q)) {
				text = true
			} else if text {
				r = from(q)
			}
		}
		memo[s] = r
		return r
	}
	return from(-1)
}

// FuzzFoldFeasible: with small line limits, the folder folds exactly the
// values some folding fits (a brute-force search), within the limits.
func FuzzFoldFeasible(f *testing.F) {
	f.Add("ab cccccc      dddddd", 3, 8)
	f.Add("aaaa bb\tcc  d", 2, 6)
	f.Fuzz(func(t *testing.T, v string, pre, max int) {
		if len(v) > 64 || strings.ContainsAny(v, "\r\n") || pre < 1 || pre > 20 || max < 4 || max > 40 || pre+2 > max { // names fit (at most 73 characters)
			return
		}
		fd := newFolder(strings.Repeat("n", pre-1), v)
		fd.pref, fd.max = max/2, max
		raw, err := fd.fold(true)
		if want := foldableBrute(fd); (err == nil) != want {
			t.Fatalf("%q pre %d max %d: err %v, brute force foldable %v", v, pre, max, err, want)
		}
		if err != nil {
			return
		}
		for _, l := range strings.Split(strings.TrimSuffix(string(raw), "\r\n"), "\r\n") {
			if len(l) > max {
				t.Fatalf("%q pre %d max %d: line %q longer than %d", v, pre, max, l, max)
			}
		}
		if got, w := strings.ReplaceAll(string(raw), "\r\n", ""), strings.Repeat("n", pre-1)+": "+strings.Trim(v, " \t"); got != w {
			t.Fatalf("unfolded %q, want %q", got, w)
		}
	})
}

// FuzzFoldReadsBack: any value FoldField folds unfolds (RFC 5322) to the
// value trimmed of its end blanks, in valid lines; go-message's reader
// (the one AddRaw, the spool and every stage use) reads it back exactly
// when the folds are at single spaces; what FoldField refuses,
// CheckFold refuses.
func FuzzFoldReadsBack(f *testing.F) {
	f.Add("X-A", benchReceived, 0)
	f.Add("X-A", "ab  ab  ab  ab  ab  ab  ab  ab  ab  ab  ab  ab  ab  ab  ab  ab  ab  ab  ab  ab  ab  ", 0)
	f.Add("x-b", "a\tb", 30)
	f.Add("X-C", " lead and trail\t", 100)
	f.Fuzz(func(t *testing.T, name, value string, repeat int) {
		if !validFieldName(name) || len(name) > MaxEditFieldName || strings.ContainsAny(value, "\r\n") {
			return
		}
		if repeat > 0 && repeat < 400 && len(value) < 100 { // long values from short inputs
			value = strings.Repeat(value, repeat)
		}
		raw, err := FoldField(name, value)
		if (err == nil) != (CheckFold(name, value) == nil) {
			t.Fatalf("FoldField %v, CheckFold disagrees", err)
		}
		var fe *FoldError
		if err != nil {
			if !errors.As(err, &fe) {
				t.Fatal(err)
			}
			return
		}
		checkFolded(t, raw, name, value)
		// Stored with AddRaw, the field reads back as go-message reads it.
		var h textproto.Header
		h.AddRaw(raw)
		rd, _ := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(append(raw, "\r\n"...))))
		if h.Get(name) != rd.Get(name) {
			t.Fatalf("AddRaw reads %q, ReadHeader %q", h.Get(name), rd.Get(name))
		}
	})
}

// TestRelaxFold: a value FoldField refuses is folded by AddHeaderField
// after relaxFold, every line within 998, no byte of the value lost.
func TestRelaxFold(t *testing.T) {
	for _, v := range []string{
		strings.Repeat("w", 5000),
		"from " + strings.Repeat("é", 3000) + " by relay",
		strings.Repeat("x", 900) + strings.Repeat(" ", 1500) + strings.Repeat("y", 900),
	} {
		if _, err := FoldField("Received", v); err == nil {
			t.Fatalf("%.30q: folded: the test no longer needs relaxFold", v)
		}
		var h textproto.Header
		AddHeaderField(&h, "Received", v)
		raw, err := h.Raw("Received")
		if err != nil {
			t.Fatal(err)
		}
		r := relaxFold(v)
		checkFolded(t, raw, "Received", r)
		if strings.ReplaceAll(r, " ", "") != strings.ReplaceAll(v, " ", "") {
			t.Errorf("%.30q: relaxFold lost text", v)
		}
	}
}

// TestHeaderEditUnfoldable: an added or set value with a run too long
// for any line is refused by ApplyEdits with an error naming the field,
// before anything is applied; a run of 997 characters is added.
func TestHeaderEditUnfoldable(t *testing.T) {
	for _, op := range []string{HeaderAdd, HeaderSet} {
		msg := &Message{Txn: &Txn{}}
		e := &Edits{Headers: []HeaderEdit{{Op: HeaderAdd, Name: "X-Ok", Value: "1"}, {Op: op, Name: "X-Token", Value: "t=" + strings.Repeat("A", 1200)}}}
		err := ApplyEdits("s", "on_message", e, msg.Txn, msg)
		var fe *FoldError
		if !errors.As(err, &fe) || !strings.Contains(err.Error(), `stage "s"`) || !strings.Contains(err.Error(), "X-Token") {
			t.Errorf("%s: err %v, want a FoldError naming the stage and the field", op, err)
		}
		if msg.Header.Len() != 0 {
			t.Errorf("%s: refused edits applied", op)
		}
		v := "t= " + strings.Repeat("A", 997)
		if err := ApplyEdits("s", "on_message", &Edits{Headers: []HeaderEdit{{Op: op, Name: "X-Token", Value: v}}}, msg.Txn, msg); err != nil {
			t.Fatalf("%s: %v", op, err)
		}
		raw, _ := msg.Header.Raw("X-Token")
		checkFolded(t, raw, "X-Token", v)
	}
	// Removing takes no value to fold.
	msg := &Message{Txn: &Txn{}}
	if err := ApplyEdits("s", "on_message", &Edits{Headers: []HeaderEdit{{Op: HeaderRemove, Name: "X-Token", Value: strings.Repeat("A", 1200)}}}, msg.Txn, msg); err != nil {
		t.Error(err)
	}
}

// TestAuthenticationResultsFolds: the Authentication-Results field of
// many long results folds at single spaces only (runs of blanks in
// reasons and properties are written as one space), in lines of at most
// 998, and reads back as formatted; a word longer than MaxAuthResultWord
// is refused, and so is a stage's result that would take the field past
// MaxEditFieldValue.
func TestAuthenticationResultsFolds(t *testing.T) {
	word := strings.Repeat("b", MaxAuthResultWord)
	rs := []AuthResult{
		{Method: "spf", Result: "pass", Props: []string{"smtp.mailfrom=example.com"}},
		{Method: "x-long", Result: "pass", Reason: word + " \t  " + word + "\t", Props: []string{"x.y=" + word[4:], " a  b "}},
		{Method: "x-words", Result: "fail", Reason: strings.Repeat("some  reason\t", 300)},
	}
	for _, r := range rs {
		if err := r.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	v := AuthenticationResults("relay.example", rs)
	if strings.Contains(v, "  ") || strings.Contains(v, "\t") {
		t.Fatalf("blank runs left in %q", v)
	}
	if !strings.Contains(v, `; x-long=pass reason="`+word+" "+word+`" x.y=`+word[4:]+" a b;") {
		t.Errorf("x-long written as %.200q", v)
	}
	raw, err := FoldField("Authentication-Results", v)
	if err != nil {
		t.Fatal(err)
	}
	checkFolded(t, raw, "Authentication-Results", v)
	if n := bytes.Count(raw, []byte("\r\n")); n < 50 {
		t.Errorf("%d lines: not folded", n)
	}
	msg := &Message{Txn: &Txn{AuthResults: rs}}
	c := &Chain{opts: ChainOptions{AuthServID: "relay.example"}}
	if err := c.finish(t.Context(), msg); err != nil {
		t.Fatal(err)
	}
	if got, _ := msg.Header.Raw("Authentication-Results"); !bytes.Equal(got, raw) {
		t.Errorf("the chain wrote %.100q, want %.100q", got, raw)
	}

	for _, a := range []AuthResult{
		{Method: "x", Result: "pass", Reason: "a " + word + "c"},
		{Method: "x", Result: "pass", Props: []string{"header.b=" + word}},
		{Method: strings.Repeat("m", MaxAuthResultWord), Result: "pass"},
	} {
		if err := a.Validate(); err == nil || !strings.Contains(err.Error(), "at most") {
			t.Errorf("%.30v: err %v, want it refused", a, err)
		}
	}
	// The stages' results together: the one that would pass the cap is refused.
	txn := &Txn{}
	big := AuthResult{Method: "x", Result: "pass", Reason: strings.TrimSpace(strings.Repeat("word ", 60<<10/5))}
	if err := ApplyEdits("a", "on_message", &Edits{AuthResults: []AuthResult{big}}, txn, nil); err != nil {
		t.Fatal(err)
	}
	err = ApplyEdits("b", "on_message", &Edits{AuthResults: []AuthResult{big}}, txn, nil)
	if err == nil || !strings.Contains(err.Error(), `stage "b"`) || !strings.Contains(err.Error(), "Authentication-Results") || len(txn.AuthResults) != 1 {
		t.Errorf("err %v, %d results, want the second refused", err, len(txn.AuthResults))
	}
}
