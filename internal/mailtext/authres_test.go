package mailtext

import "testing"

func TestAuthHelpers(t *testing.T) {
	if got := AuthReason("bad;\r\nrecord  here"); got != "bad, record here" {
		t.Errorf("AuthReason: %q", got)
	}
	if got := AuthPropValue(`a b;c(d)"e\f@x.test`); got != "abcdef@x.test" {
		t.Errorf("AuthPropValue: %q", got)
	}
}
