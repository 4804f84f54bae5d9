package server

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/pipeline"
)

// TestDKIMDocsExamples loads every ```lua block of docs/dkim.md that
// declares stages and builds each built-in stage from its options (key
// files are not read: their paths are the reader's), so the page cannot
// show an option the stages refuse.
func TestDKIMDocsExamples(t *testing.T) {
	src, err := os.ReadFile("../../docs/dkim.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```lua\n(.*?)```").FindAllStringSubmatch(string(src), -1)
	built := 0
	for i, b := range blocks {
		if !strings.Contains(b[1], "sluice.stage(") {
			continue
		}
		cfg, err := config.Parse("dkim.md", []byte(b[1]))
		if err != nil {
			t.Errorf("block %d: %v", i, err)
			continue
		}
		for _, spec := range cfg.Stages {
			if spec.Kind != config.StageBuiltin {
				continue
			}
			f, _ := pipeline.Lookup(spec.Builtin)
			if _, err := f(spec.Name, spec.Options); err != nil {
				t.Errorf("block %d, stage %s: %v", i, spec.Name, err)
			}
			built++
		}
	}
	if built < 4 {
		t.Fatalf("built only %d stages from docs/dkim.md", built)
	}
}
