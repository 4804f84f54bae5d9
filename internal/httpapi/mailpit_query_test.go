package httpapi

import (
	"slices"
	"testing"

	"github.com/sluice-mta/sluice/internal/capture"
)

// TestMailpitQueryTerms: free words of a Mailpit query are separate text
// terms and a quoted phrase stays one, as Mailpit searches.
func TestMailpitQueryTerms(t *testing.T) {
	f := mailpitQuery(`to:bob@example.test subject:"Your code" welcome "order 42" back`)
	if f.To != "bob@example.test" || f.Subject != "Your code" {
		t.Fatalf("fields: %+v", f)
	}
	if got, want := capture.TextTerms(f.Text), []string{"welcome", "order 42", "back"}; !slices.Equal(got, want) {
		t.Fatalf("text terms %q, want %q", got, want)
	}
}
