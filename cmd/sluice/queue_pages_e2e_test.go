package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// TestQueueShowAllJSONSkipsEmptyPages: 10,001 queued messages from one
// sender, then one from another. The API examines at most 10,000
// messages a request, so a listing filtered on the second sender answers
// a first page with nothing in it and a next_cursor. `sluice queue show
// --json --all` prints only what lists something: one page, with the
// match; a filter matching nothing prints one empty page.
func TestQueueShowAllJSONSkipsEmptyPages(t *testing.T) {
	const bulk = 10_001
	h, key, _ := newQueueEnvWith(t, "", func(dir string) {
		sp, err := spool.Open(dir, spool.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer sp.Close()
		now := time.Now()
		b := sp.NewBatch()
		put := func(sender, rcpt string) {
			m := &spool.Meta{ID: sp.NewID(), Sender: sender, Source: "smtp", Received: now, Size: 20}
			_ = b.PutMessage(m, []byte("Subject: x\r\n\r\nbody\r\n"))
			_ = b.PutRecipient(&spool.Recipient{MsgID: m.ID, Address: rcpt, Domain: "smart.test",
				Route:    &pipeline.Route{Kind: pipeline.RouteRelay, Host: "127.0.0.1", Port: 9, TLS: "none"},
				Attempts: 1, NextAttempt: now.Add(time.Hour)})
		}
		for i := range bulk {
			put("bulk@src.test", fmt.Sprintf("u%d@smart.test", i))
			if i%2000 == 1999 {
				if err := b.Commit(false); err != nil {
					t.Fatal(err)
				}
				b = sp.NewBatch()
			}
		}
		put("rare@src.test", "rare@smart.test")
		if err := b.Commit(true); err != nil {
			t.Fatal(err)
		}
	})
	type page struct {
		Messages []struct {
			Sender string `json:"sender"`
		} `json:"messages"`
		NextCursor string `json:"next_cursor"`
	}
	pages := func(args ...string) []page {
		t.Helper()
		var out []page
		for _, l := range strings.Split(strings.TrimSpace(h.queueCLI(key, args...)), "\n") {
			var p page
			if err := json.Unmarshal([]byte(l), &p); err != nil {
				t.Fatalf("show %v printed a line that is not a page: %q: %v", args, l, err)
			}
			out = append(out, p)
		}
		return out
	}
	// The API itself answers the empty first page (by design): what the
	// CLI must not print.
	if p := pages("show", "--json", "--sender", "rare@src.test"); len(p) != 1 || len(p[0].Messages) != 0 || p[0].NextCursor == "" {
		t.Fatalf("one page of the filtered listing: %+v; want an empty page with a next_cursor", p)
	}
	if p := pages("show", "--json", "--all", "--sender", "rare@src.test"); len(p) != 1 || len(p[0].Messages) != 1 || p[0].Messages[0].Sender != "rare@src.test" {
		t.Fatalf("show --json --all printed %d pages: %+v; want one, with the match", len(p), p)
	}
	if p := pages("show", "--json", "--all", "--sender", "none@src.test"); len(p) != 1 || len(p[0].Messages) != 0 || p[0].NextCursor != "" {
		t.Fatalf("show --json --all of nothing printed %+v; want one empty last page", p)
	}
}
