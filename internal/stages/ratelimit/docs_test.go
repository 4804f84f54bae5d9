package ratelimit_test

import (
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/server"
)

// TestDocs: every ```lua block of docs/ratelimit.md builds a node (the
// options parse and validate; a listener is added when the block has
// none), and every option the stage knows has a row in its table.
func TestDocs(t *testing.T) {
	src, err := os.ReadFile("../../../docs/ratelimit.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```lua\n(.*?)```").FindAllStringSubmatch(string(src), -1)
	if len(blocks) < 4 {
		t.Fatalf("found only %d lua blocks", len(blocks))
	}
	for i, b := range blocks {
		code := b[1]
		if !strings.Contains(code, "listen_smtp") {
			code = "sluice.listen_smtp { addr = \"127.0.0.1:2525\" }\n" + code
		}
		if strings.Contains(code, `"redis"`) && !strings.Contains(code, "sluice.redis") {
			code = "sluice.redis { addr = \"127.0.0.1:6379\" }\n" + code
		}
		p := filepath.Join(t.TempDir(), "pipeline.lua")
		if err := os.WriteFile(p, []byte(code), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(p)
		if err == nil {
			_, err = server.New(cfg, slog.New(slog.DiscardHandler))
		}
		if err != nil {
			t.Errorf("block %d:\n%s\nerror: %v", i, code, err)
		}
	}
	for _, opt := range []string{"store", "on_store_error", "code", "limits", "limits[i].key", "limits[i].rate",
		"limits[i].burst", "limits[i].count", "limits[i].name"} {
		if !strings.Contains(string(src), "| `"+opt+"` |") {
			t.Errorf("option %s has no row in docs/ratelimit.md", opt)
		}
	}
}
