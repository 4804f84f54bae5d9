package config

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/testutil"
)

func TestPluginSpec(t *testing.T) {
	dir := testutil.TempFiles(t, map[string]string{"pipeline.lua": `
sluice.listen_smtp { addr = ":25" }
sluice.stage("scorer", sluice.plugin {
  cmd = "./bin/scorer", args = { "-v" }, env = { B = "2", A = "1" }, timeout = "250ms",
  max_in_flight = 8, on_error = "reject", hooks = { "on_message" },
  config = { threshold = 5.5, words = { "viagra" }, nested = { x = true } },
})
sluice.stage("bare", sluice.plugin { cmd = "spamd", config = {} })
`})
	cfg, err := Load(filepath.Join(dir, "pipeline.lua"))
	if err != nil {
		t.Fatal(err)
	}
	want := &PluginSpec{Cmd: filepath.Join(dir, "bin/scorer"), Args: []string{"-v"}, OnError: OnErrorReject, Timeout: 250 * time.Millisecond,
		Env: []string{"A=1", "B=2"}, MaxInFlight: 8, Hooks: []string{"on_message"},
		Config: map[string]any{"threshold": 5.5, "words": []any{"viagra"}, "nested": map[string]any{"x": true}}}
	if got := cfg.Stages[0].Plugin; !reflect.DeepEqual(got, want) {
		t.Fatalf("spec:\n got %#v\nwant %#v", got, want)
	}
	if got := cfg.Stages[1].Plugin; got.Config == nil || len(got.Config) != 0 || got.Env != nil {
		t.Fatalf("bare spec: %#v", got)
	}
	for _, tt := range []struct{ src, want string }{
		{`sluice.plugin { cmd = "x", max_in_flight = 0 }`, `key "max_in_flight": must be at least 1`},
		{`sluice.plugin { cmd = "x", env = { A = 1 } }`, `key "env": "A": the value must be a string, got a number (1): write A = "1"`},
		{`sluice.plugin { cmd = "x", env = { A = true } }`, `key "env": "A": the value must be a string, got a boolean (true)`},
		{`sluice.plugin { cmd = "x", env = { ["A=B"] = "1" } }`, `key "env": "A=B": want NAME = "string value" (no '=' or NUL in names or values)`},
		{`sluice.plugin { cmd = "x", config = { rate = 0/0 } }`, `key "config": config.rate is NaN or infinite, which JSON cannot carry to the plugin`},
		{`sluice.plugin { cmd = "x", config = { l = { 1, { max = -1/0 } } } }`, `key "config": config.l[2].max is NaN or infinite`},
		{`sluice.plugin { cmd = "x", env = "A=1" }`, `key "env": want a table of key = value`},
		{`sluice.plugin { cmd = "x", config = { 1, 2 } }`, `key "config": want a table of key = value, got a list`},
		{`sluice.plugin { cmd = "x", hooks = { "on_auth" } }`, `key "hooks": "on_auth" is not a plugin hook`},
		{`sluice.plugin { cmd = "x", hooks = {} }`, `key "hooks": is empty: list the hooks`},
		{`sluice.plugin { cmd = "x", hooks = "on_mail" }`, `key "hooks": want a list of strings, e.g. hooks = { "on_mail" }, got a string`},
		{`sluice.plugin { cmd = "x", args = "-v" }`, `key "args": want a list of strings, e.g. args = { "-v" }, got a string`},
	} {
		dir := testutil.TempFiles(t, map[string]string{"pipeline.lua": "sluice.listen_smtp { addr = ':25' }\nsluice.stage('p', " + tt.src + ")\n"})
		_, err := Load(filepath.Join(dir, "pipeline.lua"))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want %q", tt.src, err, tt.want)
		}
	}
}
