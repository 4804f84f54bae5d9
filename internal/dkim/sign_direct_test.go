package dkim

import (
	"bytes"
	"strings"
	"testing"

	msgauth "github.com/emersion/go-msgauth/dkim"
)

// tagValue is tag's value in a DKIM-Signature field, unfolded.
func tagValue(field, tag string) string {
	v := strings.Join(strings.Fields(strings.TrimPrefix(field, "DKIM-Signature:")), "")
	for _, tv := range strings.Split(v, ";") {
		if k, val, ok := strings.Cut(tv, "="); ok && k == tag {
			return val
		}
	}
	return ""
}

// TestSignMatchesGoMsgauth: Sign hashes the header and body itself; for
// awkward bodies and headers (lone LF and CR, trailing blank lines and
// white space, empty body, folded and repeated fields) in both
// canonicalizations, its bh= equals go-msgauth's Signer's and
// go-msgauth's Verifier passes the signature.
func TestSignMatchesGoMsgauth(t *testing.T) {
	edKey, edRec := genKey(t, AlgoEd25519, "example.com", "e1")
	rsaKey, rsaRec := genKey(t, AlgoRSA, "example.com", "r1")
	recs := map[string]string{"e1._domainkey.example.com": edRec, "r1._domainkey.example.com": rsaRec}
	hdr := "From: Alice <alice@example.com>\r\nTo: bob@example.org,\r\n\tcarol@example.org\r\nSubject:   two   spaces \t \r\n" +
		"Received: x\r\nTo: second@example.org\r\nDATE: Mon, 30 Nov 2026 10:00:00 +0000\r\n\r\n"
	bodies := []string{
		"", "\r\n", "\r\n\r\n\r\n", "x", "x\r\n", "x\n\n\n", "a  b \t\r\n\tc\r\n \r\n\r\n",
		"lone\rcr\r\n", "ends in cr\r", "ends in cr after lines\r\n\r\n\r", "\nlead lf\nmid\n", " \t \r\n",
		strings.Repeat("long line with  spaces \t", 400) + "\r\n\r\n" + strings.Repeat("x\r\n\r\n", 3000),
	}
	for _, c := range []string{"relaxed/relaxed", "simple/simple", "relaxed/simple", "simple/relaxed"} {
		hc, bc, _ := strings.Cut(c, "/")
		o := &Options{HeaderCanon: hc, BodyCanon: bc}
		for _, body := range bodies {
			m := parse(t, hdr+body)
			fields, err := Sign([]*Key{edKey, rsaKey}, o, &m.Header, m.Body)
			if err != nil {
				t.Fatal(err)
			}
			ref, err := msgauth.NewSigner(&msgauth.SignOptions{Domain: "example.com", Selector: "e1", Signer: edKey.Signer,
				HeaderCanonicalization: canon(hc), BodyCanonicalization: canon(bc), HeaderKeys: o.HeaderKeys(&m.Header)})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := m.WriteTo(ref); err != nil {
				t.Fatal(err)
			}
			if err := ref.Close(); err != nil {
				t.Fatal(err)
			}
			if got, want := tagValue(fields[0], "bh"), tagValue(ref.Signature(), "bh"); got != want {
				t.Errorf("%s body %q: bh=%s, go-msgauth bh=%s", c, body, got, want)
			}
			if got, want := tagValue(fields[0], "h"), tagValue(ref.Signature(), "h"); got != want {
				t.Errorf("%s: h=%s, go-msgauth h=%s", c, got, want)
			}
			for i := len(fields) - 1; i >= 0; i-- {
				m.Header.AddRaw([]byte(fields[i]))
			}
			out, err := m.Bytes()
			if err != nil {
				t.Fatal(err)
			}
			vs, err := msgauth.VerifyWithOptions(bytes.NewReader(out), &msgauth.VerifyOptions{
				LookupTXT: func(n string) ([]string, error) { return []string{recs[n]}, nil }})
			if err != nil || len(vs) != 2 {
				t.Fatalf("%s body %q: verify: %v, %d results", c, body, err, len(vs))
			}
			for _, v := range vs {
				if v.Err != nil {
					t.Errorf("%s body %q: go-msgauth: %v\n%s", c, body, v.Err, out)
				}
			}
		}
	}
}

// TestSignDetectsChange: a test that could not fail would prove nothing:
// the verifier fails the signature once the body or a signed field
// changes.
func TestSignDetectsChange(t *testing.T) {
	edKey, edRec := genKey(t, AlgoEd25519, "example.com", "e1")
	for _, change := range []func(b []byte) []byte{
		func(b []byte) []byte { return bytes.Replace(b, []byte("Hello Bob"), []byte("Hello Bub"), 1) },
		func(b []byte) []byte { return bytes.Replace(b, []byte("Subject: hello"), []byte("Subject: hellO"), 1) },
	} {
		out := change(signed(t, parse(t, testMsg), edKey))
		vs, err := msgauth.VerifyWithOptions(bytes.NewReader(out), &msgauth.VerifyOptions{
			LookupTXT: func(string) ([]string, error) { return []string{edRec}, nil }})
		if err != nil || len(vs) != 1 || vs[0].Err == nil {
			t.Errorf("changed message verified: %v %+v\n%s", err, vs, out)
		}
	}
}
