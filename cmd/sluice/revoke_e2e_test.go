package main

// End-to-end token revocation: two `sluice serve` processes sharing one
// real redis-server and one signing key. A token minted on node A is
// revoked on A (HTTP DELETE, then a whole tenant with `sluice token
// revoke`); node B refuses it over HTTP and SMTP (OAUTHBEARER, XOAUTH2,
// and at the next MAIL of a session already authenticated), also after
// a restart without Redis; a revocation made while Redis is down reaches
// B once Redis is back.

import (
	"encoding/json"
	"fmt"
	"net/smtp"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

func TestRevocationAcrossNodes(t *testing.T) {
	rd := testutil.StartRedis(t)
	dir := t.TempDir()
	if out, code := runBin(t, "token", "keygen", "--out", filepath.Join(dir, "k1")); code != 0 {
		t.Fatalf("keygen: %s", out)
	}
	shared := fmt.Sprintf("sluice.tokens { signing_key = %q, max_lifetime = \"10m\" }\nsluice.redis { addr = %q, key_prefix = \"e2e:\" }\n",
		filepath.Join(dir, "k1.secret"), rd.Addr)
	a, b := newHTTPEnv(t), newHTTPEnv(t)
	subB := freePort(t)
	cfgA := mustRead(t, a.relay.cfg) + shared
	cfgB := strings.Replace(mustRead(t, b.relay.cfg), "http-e2e-1", "http-e2e-2", 1) + shared +
		fmt.Sprintf("sluice.listen_smtp { name = \"submission\", addr = %q, auth = \"required\" }\n", subB)
	for _, f := range []struct{ path, body string }{{a.relay.cfg, cfgA}, {b.relay.cfg, cfgB}} {
		if err := os.WriteFile(f.path, []byte(f.body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	a.start()
	b.start()
	minter, _ := a.createKey("acme", "send", "tokens")
	mint := func() (tok, id string) {
		t.Helper()
		r := a.do("POST", "/v1/tokens", minter, []byte(`{}`), nil)
		var m struct{ Token, ID string }
		if err := json.Unmarshal(r.body, &m); err != nil || r.status != 201 {
			t.Fatalf("mint: %s", r)
		}
		return m.Token, m.ID
	}
	msg := []byte(`{"from":"app@sender.test","to":"fn@smart.test","subject":"x","text":"hi"}`)
	sendB := func(tok string) httpResp { t.Helper(); return b.do("POST", "/v1/messages", tok, msg, nil) }
	refusedOnB := func(tok string) bool {
		r := sendB(tok)
		if r.status == 202 {
			return false
		}
		if r.status != 401 || r.apiError().Error.Code != "token_revoked" {
			t.Fatalf("node B: want 202 or 401 token_revoked, got %s", r)
		}
		return true
	}
	tok1, id1 := mint()
	tok2, _ := mint()
	for _, tok := range []string{tok1, tok2} {
		if r := sendB(tok); r.status != 202 {
			t.Fatalf("a token minted on A, on B: %s", r)
		}
	}

	// Revoked on A by id: B refuses it within seconds (pub/sub).
	if r := a.do("DELETE", "/v1/tokens/"+id1, minter, nil, nil); r.status != 204 {
		t.Fatalf("DELETE on A: %s", r)
	}
	waitFor(t, "node B refuses the token revoked on A", func() bool { return refusedOnB(tok1) })
	// A reload installs a new verifier: it keeps the revocations.
	if out, code := runBin(t, "reload", "-c", b.relay.cfg); code != 0 {
		t.Fatalf("reload B: exit %d\n%s", code, out)
	}
	if !refusedOnB(tok1) {
		t.Fatal("node B forgot the revocation at a reload")
	}
	if r := sendB(tok2); r.status != 202 {
		t.Fatalf("another token of the tenant: %s", r)
	}
	// The same over SMTP on B: a valid and a revoked token, both mechanisms.
	for _, mech := range []string{"OAUTHBEARER", "XOAUTH2"} {
		if err := sendWithToken(subB, mech, tok2, "app@sender.test", "fn@smart.test"); err != nil {
			t.Fatalf("%s with a valid token: %v", mech, err)
		}
		if err := sendWithToken(subB, mech, tok1, "app@sender.test", "fn@smart.test"); err == nil ||
			!strings.Contains(err.Error(), "535") || !strings.Contains(err.Error(), "revoked") {
			t.Fatalf("%s with a revoked token: %v", mech, err)
		}
	}

	// A session authenticated with tok2 before the tenant is revoked
	// (by the CLI, through A's API) is refused at its next MAIL.
	c, err := smtp.Dial(subB)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("fn.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Auth(rawAuth{"XOAUTH2", "user=fn\x01auth=Bearer " + tok2 + "\x01\x01"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("app@sender.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	out, code := runBin(t, "token", "revoke", "--tenant", "acme", "--url", a.base, "--key", minter)
	if code != 0 || !strings.Contains(out, "revoked every token of tenant acme issued before") {
		t.Fatalf("sluice token revoke --tenant: exit %d: %s", code, out)
	}
	waitFor(t, "node B refuses the tenant's older tokens", func() bool { return refusedOnB(tok2) })
	if err := c.Mail("app@sender.test"); err == nil || !strings.Contains(err.Error(), "530") || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("MAIL in a session whose token was revoked: %v", err)
	}
	var tok3, id3 string
	waitFor(t, "a token minted after the tenant revocation works on B", func() bool {
		tok3, id3 = mint()
		return !refusedOnB(tok3)
	})

	// Restarted without Redis, B still refuses both (its spool).
	rd.Stop()
	b.relay.stop()
	b.start()
	for _, tok := range []string{tok1, tok2} {
		if !refusedOnB(tok) {
			t.Fatal("node B forgot a revocation across a restart")
		}
	}
	// Redis down: a revocation on A applies on A at once, and reaches
	// B when Redis is back.
	out, code = runBin(t, "token", "revoke", id3, "--url", a.base, "--key", minter)
	if code != 0 || !strings.Contains(out, "revoked token "+id3) {
		t.Fatalf("sluice token revoke ID with Redis down: exit %d: %s", code, out)
	}
	if r := a.do("POST", "/v1/messages", tok3, msg, nil); r.status != 401 || r.apiError().Error.Code != "token_revoked" {
		t.Fatalf("node A with Redis down: %s", r)
	}
	if refusedOnB(tok3) {
		t.Fatal("node B learned the revocation without Redis")
	}
	rd.Start()
	waitFor(t, "node B learns the revocation made while Redis was down", func() bool { return refusedOnB(tok3) })

	// One token_revoked event per revocation, on the node that made it.
	evs := a.relay.waitEvents("three token_revoked events on A", func(evs []pipeline.Event) bool {
		return countType(evs, pipeline.EventTokenRevoked, "") == 3
	})
	var sources []string
	for _, ev := range evs {
		if ev.Type == pipeline.EventTokenRevoked {
			sources = append(sources, ev.Source+":"+ev.Metadata["token_id"])
		}
	}
	if want := []string{"api:" + id1, "cli:", "cli:" + id3}; fmt.Sprint(sources) != fmt.Sprint(want) {
		t.Fatalf("token_revoked events %v, want %v", sources, want)
	}
	if n := countType(b.relay.readEvents(), pipeline.EventTokenRevoked, ""); n != 0 {
		t.Fatalf("node B recorded %d token_revoked events; the revoking node records them", n)
	}
}
