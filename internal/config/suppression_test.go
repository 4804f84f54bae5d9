package config

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/testutil"
)

func TestLoadSuppression(t *testing.T) {
	load := func(body string) (*Config, error) {
		t.Helper()
		dir := testutil.TempFiles(t, map[string]string{"pipeline.lua": "local sluice = require(\"sluice\")\n" + body})
		return Load(filepath.Join(dir, "pipeline.lua"))
	}
	cfg, err := load("")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg.Suppression, DefaultSuppression()) || !cfg.Suppression.Enabled || len(cfg.Suppression.Classes) != 3 {
		t.Errorf("default %+v", cfg.Suppression)
	}
	cfg, err = load(`sluice.suppression { enabled = false, classes = { "InvalidRecipient", "SpamBlock", "InvalidRecipient" } }`)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Suppression.Enabled || strings.Join(cfg.Suppression.Classes, ",") != "InvalidRecipient,SpamBlock" {
		t.Errorf("loaded %+v", cfg.Suppression)
	}
	if cfg, err = load(`sluice.suppression { classes = {} }`); err != nil || len(cfg.Suppression.Classes) != 0 || !cfg.Suppression.Enabled {
		t.Errorf("empty classes: %+v, %v", cfg.Suppression, err)
	}
	if d := DefaultSuppression(); len(d.Classes) != 3 {
		t.Errorf("an empty classes list changed the defaults: %v", d.Classes)
	}
	for _, c := range []struct{ body, want string }{
		{`sluice.suppression { classes = { "not a class" } }`, `pipeline.lua:2: sluice.suppression: key "classes": "not a class" is not a bounce class name`},
		{`sluice.suppression { enabled = "yes" }`, `key "enabled": want true or false`},
		{`sluice.suppression { clases = {} }`, `unknown key "clases"`},
		{"sluice.suppression {}\nsluice.suppression {}", "called twice"},
	} {
		if _, err := load(c.body); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v; want %q", c.body, err, c.want)
		}
	}
}
