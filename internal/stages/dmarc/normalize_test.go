package dmarc

import "testing"

// TestNormalizeDMARC1: tag names and keyword values in any case are
// lowered for the library; the version must be DMARC1 exactly.
func TestNormalizeDMARC1(t *testing.T) {
	for in, want := range map[string]string{
		"V=DMARC1; P=REJECT; SP=None; RUA=mailto:A@x.example": "v=DMARC1;p=reject;sp=none;rua=mailto:A@x.example",
		"v=dmarc1; p=reject":  "",
		"v=DMARC1 p=reject":   "",
		"p=reject; v=DMARC1":  "",
		" v = DMARC1 ;p=none": "v= DMARC1 ;p=none",
	} {
		got, ok := normalizeDMARC1(in)
		if ok != (want != "") || got != want {
			t.Errorf("normalizeDMARC1(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}
