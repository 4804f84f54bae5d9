package config

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/testutil"
)

// TestDocsExamples evaluates every ```lua block of docs/config.md that
// stands on its own (no built-in stages that this test binary lacks), so
// the reference cannot drift from the loader. Scripts the blocks load and
// files they read are stubbed, and the environment variables they read
// without a default are set.
func TestDocsExamples(t *testing.T) {
	src, err := os.ReadFile("../../docs/config.md")
	if err != nil {
		t.Skip("docs/config.md not found")
	}
	blocks := regexp.MustCompile("(?s)```lua\n(.*?)```").FindAllStringSubmatch(string(src), -1)
	if len(blocks) < 10 {
		t.Fatalf("found only %d lua blocks", len(blocks))
	}
	ran := 0
	for i, b := range blocks {
		code := b[1]
		if strings.Contains(code, "sluice.builtin.") {
			continue
		}
		// Stub every script the block loads.
		files := map[string]string{"pipeline.lua": code}
		for _, m := range regexp.MustCompile(`sluice\.lua\("([^"]+)"\)`).FindAllStringSubmatch(code, -1) {
			files[m[1]] = "return { on_rcpt = function() end }"
		}
		for _, m := range regexp.MustCompile(`sluice\.read_file\("([^"]+)"\)`).FindAllStringSubmatch(code, -1) {
			files[m[1]] = "stub\n"
		}
		for _, m := range regexp.MustCompile(`"([^"]+\.toml)"`).FindAllStringSubmatch(code, -1) {
			files[m[1]] = "" // shaping files: an empty one is valid
		}
		for _, m := range regexp.MustCompile(`sluice\.env\("([^"]+)"\)`).FindAllStringSubmatch(code, -1) {
			v := "stub"
			if strings.HasSuffix(m[1], "WEBHOOK_SECRET") { // must be a whsec_ secret
				v = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
			}
			t.Setenv(m[1], v)
		}
		dir := testutil.TempFiles(t, files)
		ran++
		if _, err := Load(filepath.Join(dir, "pipeline.lua")); err != nil {
			t.Errorf("block %d:\n%s\nerror: %v", i, code, err)
		}
	}
	if ran < 10 {
		t.Fatalf("ran only %d blocks", ran)
	}
}
