package config

import (
	"fmt"

	lua "github.com/yuin/gopher-lua"

	"github.com/sluice-mta/sluice/internal/luahost/sandbox"
)

// InstallRuntime installs the configuration functions into s's sluice
// module in runtime mode and returns the table that sluice.stage fills.
//
// The Lua host replays the configuration program (Config.Source) in each
// new pooled state to build the state's own copies of inline stage tables
// (Lua functions cannot move between states). In runtime mode the
// configuration functions check and record nothing: sluice.spool,
// sluice.listen_smtp, ... do nothing, sluice.lua, sluice.builtin.KIND{...}
// and sluice.plugin{...} return an inert placeholder, and sluice.stage(name,
// tbl) stores tbl under name in the returned table when tbl is a table.
// The program was already checked by Load, and it is deterministic (the
// sandbox has no clock, files or environment), so the replay defines the
// same stages.
//
// sluice.env and sluice.read_file are the exception: an inline stage may
// keep what they returned (a smarthost password), so they return values.
// This function reads the environment and the files again; prefer
// Config.InstallRuntime, which returns what Load read. In both, they
// raise an error when called from a hook rather than from the program's
// top level.
func InstallRuntime(s *sandbox.State) *lua.LTable { return installRuntime(s, nil) }

// InstallRuntime is the package function InstallRuntime for c, except
// that sluice.env and sluice.read_file return the values that Load read
// for c, without touching the environment or the file system (a secret
// file removed or changed after Load changes nothing). c may be nil.
func (c *Config) InstallRuntime(s *sandbox.State) *lua.LTable {
	if c == nil {
		return installRuntime(s, nil)
	}
	return installRuntime(s, c.secrets)
}

func installRuntime(s *sandbox.State, snap *snapshot) *lua.LTable {
	L := s.L
	m := s.Module
	stages := L.NewTable()
	placeholder := L.NewUserData()
	placeholder.Value = runtimePlaceholder{}
	noop := L.NewFunction(func(L *lua.LState) int { return 0 })
	ret := L.NewFunction(func(L *lua.LState) int { L.Push(placeholder); return 1 })
	for _, name := range FuncNames {
		m.RawSetString(name, noop)
	}
	(&secrets{s: s, replay: snap}).install(m)
	m.RawSetString("lua", ret)
	m.RawSetString("plugin", ret)
	builtin := L.NewTable()
	mt := L.NewTable()
	mt.RawSetString("__index", L.NewFunction(func(L *lua.LState) int { L.Push(ret); return 1 }))
	L.SetMetatable(builtin, mt)
	m.RawSetString("builtin", builtin)
	m.RawSetString("stage", L.NewFunction(func(L *lua.LState) int {
		if t, ok := L.Get(2).(*lua.LTable); ok {
			stages.RawSetString(L.Get(1).String(), t)
		}
		return 0
	}))
	return stages
}

type runtimePlaceholder struct{}

// CompileSource compiles the configuration program for InstallRuntime:
// cfg.Source when set, else the file cfg.File.
func CompileSource(cfg *Config) (*lua.FunctionProto, error) {
	if cfg.Source != nil {
		return sandbox.Compile(cfg.File, cfg.Source)
	}
	if cfg.File == "" {
		return nil, fmt.Errorf("config: no configuration program (Source and File are empty)")
	}
	return sandbox.CompileFile(cfg.File)
}
