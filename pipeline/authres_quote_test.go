package pipeline

import (
	"strings"
	"testing"
)

// TestAuthenticationResultsReasonQuoted: a reason is written as an RFC
// 5322 quoted-string (RFC 8601 section 2.2: reasonspec value) that ends
// where it should: a backslash in the reason (a plugin's text, a
// verifier's error) must not escape the closing quote and swallow the
// results after it.
func TestAuthenticationResultsReasonQuoted(t *testing.T) {
	rs := []AuthResult{
		{Method: "dkim", Result: "fail", Reason: `ends with backslash\`, Props: []string{"header.d=a.example"}},
		{Method: "dkim", Result: "fail", Reason: `a\"b "c"`},
		{Method: "dmarc", Result: "pass", Props: []string{"header.from=a.example"}},
	}
	for _, r := range rs {
		if err := r.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	v := AuthenticationResults("relay.example", rs)
	results, ok := splitResults(v)
	if !ok {
		t.Fatalf("unterminated quoted-string in %q", v)
	}
	if len(results) != 4 || !strings.HasPrefix(results[3], "dmarc=pass") {
		t.Fatalf("read as %d parts %q from %q", len(results), results, v)
	}
	// The longest reason Validate takes still folds (MaxAuthResultWord).
	r := AuthResult{Method: "dkim", Result: "fail", Reason: strings.Repeat(`\`, MaxAuthResultWord)}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := FoldField("Authentication-Results", AuthenticationResults("relay.example", []AuthResult{r})); err != nil {
		t.Errorf("a reason of %d backslashes: %v", MaxAuthResultWord, err)
	}
}

// splitResults splits an Authentication-Results value at the ';' outside
// quoted-strings, reading quoted-pairs as RFC 5322 section 3.2.4 does; ok
// is false for an unterminated quoted-string.
func splitResults(v string) (parts []string, ok bool) {
	start, quoted := 0, false
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case quoted && c == '\\':
			i++ // quoted-pair
		case c == '"':
			quoted = !quoted
		case !quoted && c == ';':
			parts = append(parts, strings.TrimSpace(v[start:i]))
			start = i + 1
		}
	}
	return append(parts, strings.TrimSpace(v[start:])), !quoted
}

// FuzzAuthenticationResults: results Validate takes make a field that
// FoldField folds (no relaxFold needed), that go-message reads back
// exactly, and whose quoted reasons end where they should (one part per
// result after the authserv-id).
func FuzzAuthenticationResults(f *testing.F) {
	f.Add("dkim", "fail", `x\`, "header.d=a.example", 1)
	f.Add("spf", "pass", "", "smtp.mailfrom=a.example", 40)
	f.Add("dmarc", "none", `a "quoted" \reason`, "  a  b  ", 200)
	f.Fuzz(func(t *testing.T, method, result, reason, prop string, repeat int) {
		if repeat > 0 && repeat < 300 && len(reason) < 64 {
			reason = strings.Repeat(reason, repeat)
		}
		r := AuthResult{Method: method, Result: result, Reason: reason, Props: []string{prop}}
		if r.Validate() != nil || strings.ContainsAny(prop, `"\`) {
			return // properties are written as given (their form is the stage's)
		}
		rs := []AuthResult{r, {Method: "x-last", Result: "pass"}}
		v := AuthenticationResults("relay.example", rs)
		parts, ok := splitResults(v)
		if !ok || len(parts) != 3 || parts[2] != "x-last=pass" {
			t.Fatalf("%q read as %q (terminated %v)", v, parts, ok)
		}
		raw, err := FoldField("Authentication-Results", v)
		if err != nil {
			t.Fatal(err)
		}
		checkFolded(t, raw, "Authentication-Results", v)
	})
}
