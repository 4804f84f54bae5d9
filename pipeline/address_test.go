package pipeline

import (
	"errors"
	"testing"
)

func TestParseAddress(t *testing.T) {
	for _, tt := range []struct{ in, canon, local, domain string }{
		{"bob@example.org", "bob@example.org", "bob", "example.org"},
		{"Bob.Smith@Example.ORG.", "Bob.Smith@Example.ORG", "Bob.Smith", "example.org"},
		{`"odd user"@dest.example`, `"odd user"@dest.example`, "odd user", "dest.example"},
		{`"odd sender"@origin.example`, `"odd sender"@origin.example`, "odd sender", "origin.example"},
		{`"john"@x.example`, "john@x.example", "john", "x.example"},
		{`"a@b"@c.example`, `"a@b"@c.example`, "a@b", "c.example"},
		{`"a\"b\\c"@x.example`, `"a\"b\\c"@x.example`, `a"b\c`, "x.example"},
		{`"\j"@x.example`, "j@x.example", "j", "x.example"},
		{`".dot"@x.example`, `".dot"@x.example`, ".dot", "x.example"},
		{`"a..b"@x.example`, `"a..b"@x.example`, "a..b", "x.example"},
		{"user+tag@x.example", "user+tag@x.example", "user+tag", "x.example"},
		{"!#$%&'*+-/=?^_`{|}~@x.example", "!#$%&'*+-/=?^_`{|}~@x.example", "!#$%&'*+-/=?^_`{|}~", "x.example"},
		{"用户@例子.广告", "用户@例子.广告", "用户", "例子.广告"},
		{"Jörg@Bücher.Example", "Jörg@Bücher.Example", "Jörg", "bücher.example"},
		{"a@[192.0.2.1]", "a@[192.0.2.1]", "a", "[192.0.2.1]"},
		{"a@[IPv6:2001:DB8::1]", "a@[IPv6:2001:DB8::1]", "a", "[ipv6:2001:db8::1]"},
		{"postmaster@localhost", "postmaster@localhost", "postmaster", "localhost"},
		{"a@x-y.example", "a@x-y.example", "a", "x-y.example"},
	} {
		canon, local, domain, err := ParseAddress(tt.in)
		if err != nil || canon != tt.canon || local != tt.local || domain != tt.domain {
			t.Errorf("ParseAddress(%q) = %q %q %q %v, want %q %q %q", tt.in, canon, local, domain, err, tt.canon, tt.local, tt.domain)
		}
		// The canonical form is a fixed point.
		if c2, _, _, err := ParseAddress(canon); err != nil || c2 != canon {
			t.Errorf("ParseAddress(%q) = %q %v: not canonical", canon, c2, err)
		}
	}
	for _, bad := range []string{
		"", "bob", "@x.org", "bob@", "bo\rb@x.org", "bob@x.org\n", "b ob@x.org", "b\x00@x.org", "bad\x7f@x.org",
		"bob@.", "bob@a..b", ".bob@x.org", "bob.@x.org", "b..ob@x.org", `""@x.org`, `"unterminated@x.org`,
		`"a"b@x.org`, `"a\` + "\x01" + `"@x.org`, "a(b)@x.org", "a,b@x.org", "a\"b@x.org", "a<b@x.org",
		"bob@-x.org", "bob@x-.org", "bob@x_y.org", "bob@x.org..", "bob@[1.2.3]", "bob@[IPv6:1.2.3.4]",
		"bob@[x:y]", "bob@[192.0.2.1", "bob@ex ample.org", "\xff@x.org", `"a>b"@x.org`, `"c<d"@x.org`,
		"a@" + string(make([]byte, 300)),
	} {
		if c, _, _, err := ParseAddress(bad); err == nil {
			t.Errorf("ParseAddress(%q) accepted as %q", bad, c)
		} else if e, ok := err.(*Error); !ok || e.Code/100 != 5 || e.Enhanced != (EnhancedCode{5, 1, 3}) {
			t.Errorf("ParseAddress(%q): %v", bad, err)
		}
	}
}

func TestRoutingLocalParts(t *testing.T) {
	for _, a := range []string{"victim%example.org@example.test", "victim@example.org@example.test",
		`"victim@example.org"@example.test`, "host!victim@example.test", `"a%b"@example.test`} {
		if _, err := NewRecipient(a); !errors.Is(err, ErrRoutingLocalPart) {
			t.Errorf("NewRecipient(%q): %v", a, err)
		}
		_, err := ParseSender(a)
		if e, ok := err.(*Error); !ok || e.Code != 553 || e.Enhanced != (EnhancedCode{5, 1, 7}) {
			t.Errorf("ParseSender(%q): %v", a, err)
		}
	}
	r, err := NewRecipient(`"odd user"@Dest.Example`)
	if err != nil || r.Address != `"odd user"@Dest.Example` || r.Local != "odd user" || r.Domain != "dest.example" {
		t.Fatalf("NewRecipient: %+v %v", r, err)
	}
	for in, want := range map[string]string{"": "", `"odd sender"@origin.example`: `"odd sender"@origin.example`, `"s"@x.example`: "s@x.example"} {
		if got, err := ParseSender(in); err != nil || got != want {
			t.Errorf("ParseSender(%q) = %q %v", in, got, err)
		}
	}
	if _, err := ParseSender("a\x00b@x.example"); err == nil || err.(*Error).Code != 501 || err.(*Error).Enhanced != (EnhancedCode{5, 1, 7}) {
		t.Errorf("NUL sender: %v", err)
	}
}

func TestQuoteLocalPart(t *testing.T) {
	for in, want := range map[string]string{"a": "a", "a.b": "a.b", "a b": `"a b"`, `a"b`: `"a\"b"`, `a\b`: `"a\\b"`, "": `""`, "a@b": `"a@b"`} {
		if got := QuoteLocalPart(in); got != want {
			t.Errorf("QuoteLocalPart(%q) = %q, want %q", in, got, want)
		}
	}
	if got := JoinAddress("odd user", "x.example"); got != `"odd user"@x.example` {
		t.Errorf("JoinAddress = %q", got)
	}
}
