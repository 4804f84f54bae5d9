package lua

// sluice: string length limit. Tests of the patch in sluice_limits.go.

import (
	"strings"
	"testing"
)

func TestSluiceMaxStringLenConcat(t *testing.T) {
	L := NewState()
	defer L.Close()
	L.SetMaxStringLen(1000, "max_string")
	if L.MaxStringLen() != 1000 {
		t.Fatalf("MaxStringLen = %d", L.MaxStringLen())
	}
	// At the limit: allowed.
	if err := L.DoString(`s = string.rep("x", 500) .. string.rep("y", 500)`); err != nil {
		t.Fatal(err)
	}
	if n := len(L.GetGlobal("s").String()); n != 1000 {
		t.Fatalf("len = %d", n)
	}
	for _, src := range []string{
		`local s = "x" for i = 1, 40 do s = s .. s end`,             // doubling
		`local a = string.rep("x", 400) local b = a .. 1 .. a .. a`, // one OP_CONCAT, 4 operands
		`local c = coroutine.wrap(function() local s = string.rep("x", 600) return s .. s end) c()`,
	} {
		err := L.DoString(src)
		if err == nil || !strings.Contains(err.Error(), "concatenation: result of") || !strings.Contains(err.Error(), "over the limit of 1000 bytes (max_string)") {
			t.Fatalf("%s: err = %v, want the limit error", src, err)
		}
	}
	// No limit: upstream behaviour.
	L.SetMaxStringLen(0, "")
	if err := L.DoString(`local s = "x" for i = 1, 12 do s = s .. s end assert(#s == 4096)`); err != nil {
		t.Fatal(err)
	}
}
