package config

import (
	"log/slog"
	"slices"
	"strings"

	lua "github.com/yuin/gopher-lua"

	"github.com/sluice-mta/sluice/internal/logx"
	"github.com/sluice-mta/sluice/internal/luahost/sandbox"
)

// Logging: sluice.logging { level = "info", levels = { queue = "debug", smtp = "warn" } }.
// Log levels, overall and per subsystem (docs/config.md); applied at
// start and on reload.
type Logging struct {
	// Level is the overall minimum level; nil: the command line's
	// --log-level (default info). A --log-level given on the command line
	// wins over it.
	Level *slog.Level
	// Levels are per-subsystem minimum levels (logx.Subsystems), which
	// override Level for that subsystem's lines, either way.
	Levels map[string]slog.Level
}

func (ld *loader) logging(L *lua.LState) int {
	const fn = "sluice.logging"
	ld.singleton(fn)
	o := ld.s.CheckOpts(1, fn, "level", "levels")
	var s string
	if o.String("level", &s) {
		lv, err := parseLevel(s)
		if err != nil {
			o.Fail("level", "%v", err)
		}
		ld.cfg.Logging.Level = &lv
	}
	switch t := o.Get("levels").(type) {
	case *lua.LNilType:
	case *lua.LTable:
		ld.cfg.Logging.Levels = map[string]slog.Level{}
		t.ForEach(func(k, v lua.LValue) {
			name, ok := k.(lua.LString)
			if !ok || !slices.Contains(logx.Subsystems, string(name)) {
				o.Fail("levels", "%q is not a subsystem (want one of %s)", k.String(), strings.Join(logx.Subsystems, ", "))
			}
			str, ok := v.(lua.LString)
			lv, err := parseLevel(string(str))
			if !ok || err != nil {
				o.Fail("levels", "%s: %v", name, errBadLevel(v.String()))
			}
			ld.cfg.Logging.Levels[string(name)] = lv
		})
	default:
		o.Fail("levels", "want a table of subsystem = level, got %s", sandbox.Describe(t))
	}
	return 0
}

// parseLevel reads debug, info, warn or error (any case).
func parseLevel(s string) (slog.Level, error) {
	var lv slog.Level
	err := lv.UnmarshalText([]byte(s))
	if err != nil || strings.ContainsAny(s, "+-") {
		return 0, errBadLevel(s)
	}
	return lv, nil
}

type errBadLevel string

func (e errBadLevel) Error() string {
	return "want \"debug\", \"info\", \"warn\" or \"error\", got \"" + string(e) + "\""
}

// ApplyLogging sets the levels of a logger made with logx.NewHandler to
// c's (nothing for another logger).
func (c *Config) ApplyLogging(log *slog.Logger) {
	if lv := logx.Of(log); lv != nil {
		lv.Set(c.Logging.Level, c.Logging.Levels)
	}
}
