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
	// Scan the quoted-strings as RFC 5322 section 3.2.4 reads them.
	var results []string
	start, quoted := 0, false
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case quoted && c == '\\':
			i++ // quoted-pair
		case c == '"':
			quoted = !quoted
		case !quoted && c == ';':
			results = append(results, strings.TrimSpace(v[start:i]))
			start = i + 1
		}
	}
	if quoted {
		t.Fatalf("unterminated quoted-string in %q", v)
	}
	results = append(results, strings.TrimSpace(v[start:]))
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
