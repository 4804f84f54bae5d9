package sandbox

import (
	"strings"
	"testing"
)

// TestRouteCapture: sluice.route.capture() and { tenant = } make capture
// routes, readable as route.kind and route.tenant; bad tenants and keys
// are refused.
func TestRouteCapture(t *testing.T) {
	s := New(nil)
	defer s.Close()
	v, err := run(t, s, `return sluice.route.capture()`)
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := ToRoute(v); !ok || r.Kind != "capture" || r.Tenant != "" || r.QueueName("x.test") != "sandbox:" {
		t.Fatalf("route %+v", r)
	}
	v, err = run(t, s, `local r = sluice.route.capture { tenant = "qa" } return r.kind .. " " .. r.tenant .. " " .. tostring(r)`)
	if err != nil || v.String() != "capture qa route capture" {
		t.Fatalf("%v %v", v, err)
	}
	if _, err := run(t, s, `return sluice.route.capture { tenant = "a b" }`); err == nil || !strings.Contains(err.Error(), "tenant") {
		t.Fatalf("bad tenant: %v", err)
	}
	if _, err := run(t, s, `return sluice.route.capture { tennant = "a" }`); err == nil || !strings.Contains(err.Error(), `unknown key "tennant"`) {
		t.Fatalf("bad key: %v", err)
	}
}
