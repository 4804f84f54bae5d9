package smtp

import (
	"testing"
)

func TestParser(t *testing.T) {
	validReversePaths := []struct {
		raw, path, after string
	}{
		{"<>", "", ""},
		{"<root@nsa.gov>", "root@nsa.gov", ""},
		{"root@nsa.gov", "root@nsa.gov", ""},
		{"<root@nsa.gov> AUTH=asdf@example.org", "root@nsa.gov", " AUTH=asdf@example.org"},
		{"root@nsa.gov AUTH=asdf@example.org", "root@nsa.gov", " AUTH=asdf@example.org"},
		// sluice: quoted local parts come out in canonical form.
		{`<"root"@nsa.gov>`, "root@nsa.gov", ""},
		{`<"r.o.o.t"@nsa.gov>`, "r.o.o.t@nsa.gov", ""},
		{`<"odd user"@nsa.gov>`, `"odd user"@nsa.gov`, ""},
		{`<"a@b"@nsa.gov>`, `"a@b"@nsa.gov`, ""},
		{`<"a\"b\\c"@nsa.gov> SIZE=1`, `"a\"b\\c"@nsa.gov`, " SIZE=1"},
		{`<"\x"@nsa.gov>`, "x@nsa.gov", ""},
		{`<".a"@nsa.gov>`, `".a"@nsa.gov`, ""},
		{`<"a..b"@nsa.gov>`, `"a..b"@nsa.gov`, ""},
		{`<"ü"@nsa.gov>`, "ü@nsa.gov", ""},
		{`<""@nsa.gov>`, `""@nsa.gov`, ""},
	}
	for _, tc := range validReversePaths {
		p := parser{tc.raw}
		path, err := p.parseReversePath()
		if err != nil {
			t.Errorf("parser.parseReversePath(%q) = %v", tc.raw, err)
		} else if path != tc.path {
			t.Errorf("parser.parseReversePath(%q) = %q, want %q", tc.raw, path, tc.path)
		} else if p.s != tc.after {
			t.Errorf("parser.parseReversePath(%q): got after = %q, want %q", tc.raw, p.s, tc.after)
		}
	}

	invalidReversePaths := []string{
		"",
		" ",
		"asdf",
		"<Foo Bar <root@nsa.gov>>",
		" BODY=8BITMIME SIZE=12345",
		"a:b:c@example.org",
		"<root@nsa.gov",
	}
	for _, tc := range invalidReversePaths {
		p := parser{tc}
		if path, err := p.parseReversePath(); err == nil {
			t.Errorf("parser.parseReversePath(%q) = %q, want error", tc, path)
		}
	}
}
