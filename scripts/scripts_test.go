// Package scripts holds Lua stage scripts shipped with Sluice; this test
// loads each one through the real configuration loader and Lua host and
// runs messages through it.
package scripts

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/luahost"
	"github.com/sluice-mta/sluice/internal/luatest"
	"github.com/sluice-mta/sluice/pipeline"
)

// chainFor builds a chain with one stage running script.
func chainFor(t *testing.T, script string) *pipeline.Chain {
	t.Helper()
	abs, err := filepath.Abs(script)
	if err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(t.TempDir(), "pipeline.lua")
	src := "local sluice = require('sluice')\nsluice.stage('s', sluice.lua(" + luaString(abs) + "))\n"
	if err := os.WriteFile(cfgFile, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	h, err := luahost.NewHost(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	st, err := h.Stage(cfg.Stages[0])
	if err != nil {
		t.Fatal(err)
	}
	c, err := pipeline.Compile([]pipeline.Stage{st}, pipeline.ChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func luaString(s string) string { return "[==[" + s + "]==]" }

func message(t *testing.T, sender, raw string, rcpts ...string) *pipeline.Message {
	t.Helper()
	txn := &pipeline.Txn{Conn: &pipeline.Conn{Source: pipeline.SourceSMTP, RelayNetwork: true}, ID: "m1", Sender: sender, Received: time.Now()}
	for _, a := range rcpts {
		r, err := pipeline.NewRecipient(a)
		if err != nil {
			t.Fatal(err)
		}
		txn.Recipients = append(txn.Recipients, r)
	}
	m, err := pipeline.ParseMessage(txn, []byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

var bg = context.Background()

func TestSenderPolicy(t *testing.T) {
	c := chainFor(t, "sender_policy.lua")
	for sender, code := range map[string]int{"a@spam.example": 550, "a@Phish.Example": 550, "a@ok.example": 0} {
		err := c.Mail(bg, &pipeline.Txn{Conn: &pipeline.Conn{}, Sender: sender})
		if got := pipeline.Reply(err).Code; got != code {
			t.Errorf("MAIL FROM %s: code %d, want %d", sender, got, code)
		}
	}
	m := message(t, "a@news.example.com", "From: a@news.example.com\r\nSubject: x\r\n\r\nbody\r\n", "b@x.test")
	if _, _, err := c.Message(bg, m); err != nil {
		t.Fatal(err)
	}
	if m.Header.Get("X-Sluice-Policy") != "checked" || len(m.Tags) != 1 || m.Tags[0] != "bulk" {
		t.Errorf("header %q tags %v", m.Header.Get("X-Sluice-Policy"), m.Tags)
	}
	noFrom := message(t, "a@ok.example", "Subject: x\r\n\r\nbody\r\n", "b@x.test")
	if _, _, err := c.Message(bg, noFrom); pipeline.Reply(err).Code != 550 || pipeline.Reply(err).Enhanced.String() != "5.6.0" {
		t.Errorf("message without From: %v", err)
	}
}

func TestRouteByDomain(t *testing.T) {
	c := chainFor(t, "route_by_domain.lua")
	m := message(t, "a@x.test", "From: a@x.test\r\n\r\nbody\r\n", "b@partner.example", "c@eu.example.net", "d@elsewhere.test")
	want := []struct {
		kind, host string
		port       int
	}{
		{pipeline.RouteRelay, "smtp.partner.example", 587},
		{pipeline.RouteRelay, "10.0.0.25", 25},
		{pipeline.RouteMX, "", 0},
	}
	for i, r := range m.Recipients {
		rt, _, err := c.Route(bg, m, r)
		if err != nil {
			t.Fatal(err)
		}
		if rt.Kind != want[i].kind || rt.Host != want[i].host || rt.Port != want[i].port {
			t.Errorf("%s: route %+v, want %+v", r.Address, rt, want[i])
		}
	}
}

// TestShippedScriptsLuaTests runs the Lua rule tests beside the shipped
// scripts (*_test.lua, the way `sluice test-scripts scripts` does), so
// `make test` covers them.
func TestShippedScriptsLuaTests(t *testing.T) {
	var out strings.Builder
	sum, err := luatest.Run(context.Background(), []string{"."}, luatest.Options{Out: &out})
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + out.String())
	if sum.Failed > 0 {
		t.Fatalf("%d of %d Lua tests failed:\n%s", sum.Failed, sum.Tests, out.String())
	}
	// Every shipped script has a test file, and each file has tests.
	scripts, _ := filepath.Glob("*.lua")
	for _, s := range scripts {
		if strings.HasSuffix(s, "_test.lua") {
			continue
		}
		if _, err := os.Stat(strings.TrimSuffix(s, ".lua") + "_test.lua"); err != nil {
			t.Errorf("%s has no Lua test file: %v", s, err)
		}
	}
	if sum.Files < 2 || sum.Tests < 10 {
		t.Errorf("ran %d tests in %d files; the shipped tests have more", sum.Tests, sum.Files)
	}
}
