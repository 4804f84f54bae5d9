package config

import (
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/testutil"
)

func TestLogging(t *testing.T) {
	load := func(body string) (*Config, error) {
		t.Helper()
		dir := testutil.TempFiles(t, map[string]string{"pipeline.lua": "local sluice = require(\"sluice\")\n" + body})
		return Load(filepath.Join(dir, "pipeline.lua"))
	}
	cfg, err := load(`sluice.logging { level = "WARN", levels = { queue = "debug", smtp = "error" } }`)
	if err != nil {
		t.Fatal(err)
	}
	if l := cfg.Logging; l.Level == nil || *l.Level != slog.LevelWarn || len(l.Levels) != 2 ||
		l.Levels["queue"] != slog.LevelDebug || l.Levels["smtp"] != slog.LevelError {
		t.Fatalf("logging: %+v", l)
	}
	if cfg, err := load(``); err != nil || cfg.Logging.Level != nil || cfg.Logging.Levels != nil {
		t.Fatalf("default: %+v %v", cfg.Logging, err)
	}
	for _, c := range []struct{ src, want string }{
		{`sluice.logging { level = "loud" }`, `key "level": want "debug", "info", "warn" or "error", got "loud"`},
		{`sluice.logging { level = "info+2" }`, `got "info+2"`},
		{`sluice.logging { levels = { delivery = "debug" } }`, `"delivery" is not a subsystem (want one of smtp, http, queue`},
		{`sluice.logging { levels = { queue = 3 } }`, `queue: want "debug", "info", "warn" or "error", got "3"`},
		{`sluice.logging { levels = "debug" }`, `key "levels": want a table`},
		{`sluice.logging { lvl = "debug" }`, `lvl`},
		{"sluice.logging {}\nsluice.logging {}", `called twice`},
	} {
		if _, err := load(c.src); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want %q", c.src, err, c.want)
		}
	}
}
