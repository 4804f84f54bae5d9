package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestDomainRotateCancel: `sluice domain rotate --cancel D` is DELETE
// /v1/domains/D/rotate; --cancel with another subcommand is a usage error.
func TestDomainRotateCancel(t *testing.T) {
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Method+" "+r.URL.Path)
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"domain":"shop.example","tenant":"acme","state":"verified","created":"2026-11-30T12:00:00Z","records":[],"keys":[{"selector":"s1","algo":"rsa","state":"active","since":"2026-11-30T12:00:00Z"}]}`))
	}))
	defer srv.Close()
	var out, errs bytes.Buffer
	if code := runDomain([]string{"rotate", "--cancel", "shop.example", "--url", srv.URL, "--key", "sk_test"}, &out, &errs); code != 0 {
		t.Fatalf("exit %d: %s", code, errs.String())
	}
	if len(got) != 1 || got[0] != "DELETE /v1/domains/shop.example/rotate" {
		t.Errorf("requests %v", got)
	}
	errs.Reset()
	if code := runDomain([]string{"show", "--cancel", "shop.example", "--url", srv.URL, "--key", "sk_test"}, &out, &errs); code != 2 || !strings.Contains(errs.String(), "--cancel") {
		t.Errorf("show --cancel: exit %d %s", code, errs.String())
	}
}
