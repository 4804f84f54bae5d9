package luahost

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	lua "github.com/yuin/gopher-lua"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/luahost/sandbox"
)

// TestLuaDocsExamples checks every ```lua block of docs/lua.md in the shape
// it is shown: whole scripts and hook-table fragments must evaluate to a
// valid stage table, configuration snippets must load, and statement
// snippets must compile inside a hook function.
func TestLuaDocsExamples(t *testing.T) {
	src, err := os.ReadFile("../../docs/lua.md")
	if err != nil {
		t.Skip("docs/lua.md not found")
	}
	blocks := regexp.MustCompile("(?s)```lua\n(.*?)```").FindAllStringSubmatch(string(src), -1)
	if len(blocks) < 15 {
		t.Fatalf("found only %d lua blocks", len(blocks))
	}
	hookLine := regexp.MustCompile(`(?m)^on_\w+ = function`)
	for i, b := range blocks {
		code := b[1]
		var err error
		switch {
		case strings.Contains(code, "sluice.stage("):
			_, err = config.Parse("lua.md", []byte(code))
		case strings.Contains(code, "\nreturn {"):
			err = checkStageTable(code)
		case hookLine.MatchString(code):
			loc := hookLine.FindStringIndex(code)
			err = checkStageTable(code[:loc[0]] + "return {\n" + code[loc[0]:] + "}\n")
		case onlyReturns(code):
			for _, line := range strings.Split(strings.TrimSpace(code), "\n") {
				if err = compileBody(line); err != nil {
					break
				}
			}
		default:
			err = compileBody(code)
		}
		if err != nil {
			t.Errorf("block %d:\n%s\nerror: %v", i, code, err)
		}
	}
}

func checkStageTable(code string) error {
	s := sandbox.New(discardLogger())
	defer s.Close()
	proto, err := sandbox.Compile("lua.md", []byte(code))
	if err != nil {
		return err
	}
	v, err := s.Run(context.Background(), proto, nil)
	if err != nil {
		return err
	}
	t, ok := v.(*lua.LTable)
	if !ok {
		return errorf("returned %s", sandbox.Describe(v))
	}
	hooks, err := sandbox.HookNames(t)
	if err == nil && len(hooks) == 0 {
		return errorf("no hooks")
	}
	return err
}

func compileBody(code string) error {
	_, err := sandbox.Compile("lua.md", []byte("local function hook(conn, name, txn, rcpt, msg, ev, creds, sender, v, r)\n"+code+"\nend"))
	return err
}

func onlyReturns(code string) bool {
	for _, line := range strings.Split(strings.TrimSpace(code), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "return ") {
			return false
		}
	}
	return true
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }
