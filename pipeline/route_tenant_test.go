package pipeline

import (
	"strings"
	"testing"
)

// A capture route names a tenant an API key can name, or none (the
// message's): any other name would be an inbox no key can read.
func TestCaptureRouteTenantName(t *testing.T) {
	for tenant, ok := range map[string]bool{"": true, "acme-test": true, "ci.2_x": true,
		"bad/name": false, "co:lon": false, "../x": false, "üñí": false, "sp ace": false,
		strings.Repeat("a", 65): false, strings.Repeat("a", 64): true} {
		if err := Capture(tenant).Validate(); (err == nil) != ok {
			t.Errorf("capture tenant %q: %v, want ok=%v", tenant, err, ok)
		}
	}
}
