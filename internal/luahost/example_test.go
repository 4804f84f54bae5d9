package luahost

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/pipeline"
)

// TestExampleConfigs loads the shipped example configurations and runs a
// message through their Lua stages, so the examples cannot drift from the
// API.
func TestExampleConfigs(t *testing.T) {
	files, _ := filepath.Glob("../../examples/*/*.lua")
	files = append([]string{"../../pipeline.example.lua"}, files...)
	n := 0
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			continue
		}
		src, _ := os.ReadFile(f)
		if !isConfig(src) {
			continue // a stage script, not a configuration
		}
		n++
		t.Run(f, func(t *testing.T) {
			cfg, err := config.Load(f)
			if err != nil {
				t.Fatal(err)
			}
			_, stages, _ := hostFor(t, cfg)
			var list []pipeline.Stage
			for _, spec := range cfg.Stages {
				if st, ok := stages[spec.Name]; ok {
					list = append(list, st)
				}
			}
			ch, err := pipeline.Compile(list, pipeline.ChainOptions{LocalDomains: cfg.LocalDomains})
			if err != nil {
				t.Fatal(err)
			}
			msg := testMsg(t)
			msg.Conn.RelayNetwork = true
			for _, r := range msg.Recipients {
				if err := ch.Rcpt(bg, msg.Txn, r); err != nil {
					t.Fatalf("rcpt %s: %v", r.Address, err)
				}
			}
			if _, _, err := ch.Message(bg, msg); err != nil {
				t.Fatal(err)
			}
			route, _, err := ch.Route(bg, msg, msg.Recipients[0])
			if err != nil || route.Validate() != nil {
				t.Fatalf("route %+v %v", route, err)
			}
		})
	}
	if n == 0 {
		t.Skip("no example configurations found")
	}
}

func isConfig(src []byte) bool {
	for _, fn := range []string{"sluice.stage(", "sluice.listen_smtp", "sluice.spool"} {
		if strings.Contains(string(src), fn) {
			return true
		}
	}
	return false
}
