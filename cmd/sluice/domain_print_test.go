package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestPrintDomainRemove: `sluice domain remove` says the domain was
// removed, not the state it had before (which read as if it were still
// registered and merely unverified).
func TestPrintDomainRemove(t *testing.T) {
	var b bytes.Buffer
	printDomain(&b, domainView{Domain: "shop.example", State: "unverified"}, "remove")
	if got, want := b.String(), "shop.example: removed\n"; got != want {
		t.Errorf("remove printed %q, want %q", got, want)
	}
}

// TestDNSBadDomainSaysWhy: `sluice dns records|check` with an operand
// that is not a domain name says so (not only the usage text), exit 2.
func TestDNSBadDomainSaysWhy(t *testing.T) {
	for _, sub := range []string{"records", "check"} {
		var out, errb bytes.Buffer
		code := run([]string{"dns", sub, "bad domain", "-c", "/nonexistent.lua"}, &out, &errb)
		if want := `sluice dns ` + sub + `: "bad domain" is not a domain name`; code != 2 || !strings.Contains(errb.String(), want) {
			t.Errorf("dns %s: exit %d, stderr lacks %q:\n%s", sub, code, want, errb.String())
		}
	}
}
