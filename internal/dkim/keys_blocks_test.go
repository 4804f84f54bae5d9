package dkim

import (
	"strings"
	"testing"
)

// TestParsePrivateKeyOneBlock: a file holding two keys (an RSA and an
// Ed25519 key concatenated) is refused, not signed with the first.
func TestParsePrivateKeyOneBlock(t *testing.T) {
	var pems []byte
	for _, algo := range []string{AlgoRSA, AlgoEd25519} {
		k, err := Generate(algo)
		if err != nil {
			t.Fatal(err)
		}
		p, err := MarshalPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		if _, got, err := ParsePrivateKey(p); err != nil || got != algo {
			t.Fatalf("one %s key: %s, %v", algo, got, err)
		}
		pems = append(pems, p...)
	}
	if _, _, err := ParsePrivateKey(pems); err == nil || !strings.Contains(err.Error(), "several PEM blocks") {
		t.Errorf("two keys in one file: %v; want a several PEM blocks error", err)
	}
}
