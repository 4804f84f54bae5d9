package config

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/testutil"
)

func TestBounces(t *testing.T) {
	cfg, err := Parse("p.lua", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Bounces.DefaultRules || len(cfg.Bounces.Rules) != 0 {
		t.Errorf("default %+v", cfg.Bounces)
	}
	dir := testutil.TempFiles(t, map[string]string{
		"conf/pipeline.lua": `sluice.bounces { rules = { "bounce.toml", "/etc/sluice/more.toml" }, default_rules = false }`,
	})
	cfg, err = Load(filepath.Join(dir, "conf/pipeline.lua"))
	if err != nil {
		t.Fatal(err)
	}
	want := Bounces{Rules: []string{filepath.Join(dir, "conf/bounce.toml"), "/etc/sluice/more.toml"}}
	if !reflect.DeepEqual(cfg.Bounces, want) {
		t.Errorf("got %+v, want %+v", cfg.Bounces, want)
	}
	for src, msg := range map[string]string{
		`sluice.bounces { rule = { "x" } }`:                     `sluice.bounces: unknown key "rule"`,
		`sluice.bounces { default_rules = false }`:              `every bounce would be Uncategorized`,
		`sluice.bounces { rules = { "" } }`:                     `must not be empty`,
		`sluice.bounces { rules = 5 }`:                          `key "rules"`,
		`sluice.bounces {} sluice.bounces {}`:                   `sluice.bounces`,
		`sluice.bounces { rules = { "a" }, default_rules = 1 }`: `want true or false`,
	} {
		if _, err := Parse("p.lua", []byte(src)); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: error %v, want %q", src, err, msg)
		}
	}
}
