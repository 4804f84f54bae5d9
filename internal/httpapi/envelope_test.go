package httpapi

import "testing"

// Envelope addresses come out in the canonical RFC 5321 form the SMTP
// source uses: quoting kept where it is needed, dropped where not.
func TestEnvelopeAddrCanonical(t *testing.T) {
	for in, want := range map[string]string{
		"bob@x.example":                   "bob@x.example",
		`"odd user"@x.example`:            `"odd user"@x.example`,
		`Odd <"odd user"@x.example>`:      `"odd user"@x.example`,
		`"victim@example.org"@x.example`:  `"victim@example.org"@x.example`,
		`"plain"@x.example`:               "plain@x.example",
		`Bob Smith <Bob.Smith@X.Example>`: "Bob.Smith@X.Example",
	} {
		got, e := envelopeAddr("to", in)
		if e != nil || got != want {
			t.Errorf("envelopeAddr(%q) = %q %v, want %q", in, got, e, want)
		}
	}
	for _, bad := range []string{"victim@example.org@x.example", "a b@x.example", "bob@x_y.example"} {
		if got, e := envelopeAddr("to", bad); e == nil {
			t.Errorf("envelopeAddr(%q) accepted as %q", bad, got)
		}
	}
}
