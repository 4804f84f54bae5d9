package token_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/revoke"
	"github.com/sluice-mta/sluice/internal/token"
)

// BenchmarkVerifyRevocable is BenchmarkVerify (a token used again) with
// the node's revocation list holding 10,000 revoked ids and 100 tenant
// times, none of them the token's: the check every request pays.
func BenchmarkVerifyRevocable(b *testing.B) {
	k := token.GenerateKey()
	tok, _, _ := token.NewIssuer(k, 0).Issue(token.IssueOptions{Tenant: "acme", Senders: []string{"acme.example"}, MaxRcpts: 50})
	l, err := revoke.New(revoke.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for i := range 10000 {
		if _, err := l.RevokeID(ctx, fmt.Sprintf("t%d", i%100), fmt.Sprintf("id%d", i), revoke.SourceAPI); err != nil {
			b.Fatal(err)
		}
	}
	for i := range 100 {
		if _, err := l.RevokeTenant(ctx, fmt.Sprintf("t%d", i), time.Now().Add(-time.Hour), revoke.SourceAPI); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := l.RevokeTenant(ctx, "acme", time.Now().Add(-time.Hour), revoke.SourceAPI); err != nil {
		b.Fatal(err)
	}
	v, _ := token.NewVerifier([]*token.PublicKey{token.GenerateKey().Public(), k.Public()}, 0, l)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(tok); err != nil {
			b.Fatal(err)
		}
	}
}
