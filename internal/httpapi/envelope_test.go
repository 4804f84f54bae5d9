package httpapi

import "testing"

// Envelope addresses come out in the canonical RFC 5321 form the SMTP
// source uses: quoting kept where it is needed, dropped where not.
func TestEnvelopeAddrCanonical(t *testing.T) {
	for in, want := range map[string]string{
		"bob@x.example":                   "bob@x.example",
		`"odd user"@x.example`:            `"odd user"@x.example`,
		`Odd <"odd user"@x.example>`:      `"odd user"@x.example`,
		`"plain"@x.example`:               "plain@x.example",
		`Bob Smith <Bob.Smith@X.Example>`: "Bob.Smith@X.Example",
	} {
		got, e := envelopeAddr("to", in)
		if e != nil || got != want {
			t.Errorf("envelopeAddr(%q) = %q %v, want %q", in, got, e, want)
		}
	}
	// What the SMTP side refuses at RCPT is a 400 naming the field here:
	// routing characters in the local part, angle brackets in quotes.
	for _, bad := range []string{"victim@example.org@x.example", `"victim@example.org"@x.example`, `"a%b"@x.example`,
		`"a>b"@x.example`, "a b@x.example", "bob@x_y.example"} {
		if got, e := envelopeAddr("to", bad); e == nil {
			t.Errorf("envelopeAddr(%q) accepted as %q", bad, got)
		}
	}
}

// The JSON message's envelope keeps quoted local parts (issue 13 item 1 on
// the HTTP side): the recipients and the sender go to the relay in the
// canonical form.
func TestComposedEnvelopeKeepsQuoting(t *testing.T) {
	v, e := validate("", &messageRequest{From: `"odd sender"@s.example`, To: addrList{`"odd user"@x.example`, `a"b@x.example`, "ok@x.example"},
		Subject: "x", Text: "y"})
	if e == nil {
		t.Fatalf("a\"b@x.example (a quote in a dot-string) accepted: %+v", v.rcpts)
	}
	v, e = validate("", &messageRequest{From: `"odd sender"@s.example`, To: addrList{`"odd user"@x.example`, `"a\"b"@x.example`, "ok@x.example"},
		Subject: "x", Text: "y"})
	if e != nil {
		t.Fatal(e)
	}
	want := []string{`"odd user"@x.example`, `"a\"b"@x.example`, "ok@x.example"}
	if len(v.rcpts) != 3 || v.rcpts[0] != want[0] || v.rcpts[1] != want[1] || v.rcpts[2] != want[2] {
		t.Fatalf("rcpts %q, want %q", v.rcpts, want)
	}
	if got := canonicalAddr(v.from.Addr); got != `"odd sender"@s.example` {
		t.Fatalf("from %q", got)
	}
}
