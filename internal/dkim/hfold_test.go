package dkim

import (
	"bytes"
	"strings"
	"testing"

	msgauth "github.com/emersion/go-msgauth/dkim"
)

// TestSignFoldsLongHeaderList: h= names every signed field once per
// occurrence, so a message with many of them (here 400 To fields, which
// a client controls) makes a long list. The DKIM-Signature field keeps
// every line within 998 characters (RFC 5322 section 2.1.1), the lines of
// h= within 78, folding h= after a colon (RFC 6376 section 3.5 allows FWS
// there), and go-msgauth verifies it in both canonicalizations.
func TestSignFoldsLongHeaderList(t *testing.T) {
	edKey, edRec := genKey(t, AlgoEd25519, "example.com", "e1")
	hdr := "From: Alice <alice@example.com>\r\n" + strings.Repeat("To: bob@example.org\r\n", 400) +
		"Subject: hello\r\n\r\nbody\r\n"
	for _, c := range []string{"relaxed", "simple"} {
		m := parse(t, hdr)
		fields, err := Sign([]*Key{edKey}, &Options{HeaderCanon: c, BodyCanon: c}, &m.Header, m.Body)
		if err != nil {
			t.Fatal(err)
		}
		for i, l := range strings.Split(strings.TrimSuffix(fields[0], "\r\n"), "\r\n") {
			if len(l) > 998 || strings.Contains(fields[0], "h=") && strings.Contains(l, "To:To") && len(l) > 78 {
				t.Errorf("%s: DKIM-Signature line %d has %d characters: %.60q...", c, i, len(l), l)
			}
			if i > 0 && (l == "" || l[0] != ' ' || strings.TrimSpace(l) == "") {
				t.Errorf("%s: line %d %q is not a continuation with text", c, i, l)
			}
		}
		if got := tagValue(fields[0], "h"); strings.Count(got, "To") != 401 { // over-signed once
			t.Errorf("%s: h= names To %d times, want 401", c, strings.Count(got, "To"))
		}
		m.Header.AddRaw([]byte(fields[0]))
		out, err := m.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		vs, err := msgauth.VerifyWithOptions(bytes.NewReader(out), &msgauth.VerifyOptions{
			LookupTXT: func(string) ([]string, error) { return []string{edRec}, nil }})
		if err != nil || len(vs) != 1 || vs[0].Err != nil || len(vs[0].HeaderKeys) != strings.Count(tagValue(fields[0], "h"), ":")+1 {
			t.Fatalf("%s: verify: %v %+v", c, err, vs)
		}
		// A changed To fails it: the long list is really signed.
		out = bytes.Replace(out, []byte("To: bob@example.org\r\nSubject"), []byte("To: eve@example.org\r\nSubject"), 1)
		vs, _ = msgauth.VerifyWithOptions(bytes.NewReader(out), &msgauth.VerifyOptions{
			LookupTXT: func(string) ([]string, error) { return []string{edRec}, nil }})
		if len(vs) != 1 || vs[0].Err == nil {
			t.Errorf("%s: a changed To verified", c)
		}
	}
}
