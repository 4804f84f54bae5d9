package main

import (
	"bytes"
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
