package capture

import (
	"slices"
	"testing"
)

// TestSummaryAddressesWithEncodedNames: a display name written as an
// RFC 2047 encoded word may decode to a comma, a quote or angle
// brackets ("Doe, John"); the summary's From, To and Cc are the
// addresses the mail parser reads from the field as written, not from
// its decoded text (which is no longer an address list), through
// quickParse and the MIME parser alike.
func TestSummaryAddressesWithEncodedNames(t *testing.T) {
	head := "From: =?utf-8?q?Doe=2C_John?= <j@x.test>\r\n" +
		"To: =?utf-8?q?Smith=2C_Bob?= <bob@x.test>, c@x.test\r\n" +
		"Cc: =?utf-8?b?PGZha2VAZXZpbC50ZXN0Pg==?= <real@x.test>\r\n" +
		"Subject: names\r\n"
	for i, data := range []string{
		head + "\r\nbody\r\n", // quickParse
		head + "Content-Transfer-Encoding: quoted-printable\r\n\r\nbody\r\n", // the MIME parser
	} {
		if _, quick := quickParse([]byte(data)); quick != (i == 0) {
			t.Fatalf("%q: quickParse %v", data, quick)
		}
		f := parseSummary([]byte(data))
		if f.from != "j@x.test" || !slices.Equal(f.to, []string{"bob@x.test", "c@x.test"}) || !slices.Equal(f.cc, []string{"real@x.test"}) {
			t.Errorf("%q:\nfrom %q to %q cc %q", data, f.from, f.to, f.cc)
		}
	}
	// The DMARC assertion reads the same From.
	p := Parse([]byte(head + "\r\nbody\r\n"))
	if l, err := p.Addresses("From"); err != nil || len(l) != 1 || l[0].Address != "j@x.test" || l[0].Name != "Doe, John" {
		t.Fatalf("Addresses(From) = %v, %v", l, err)
	}
}
