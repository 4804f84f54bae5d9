package luahost

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	lua "github.com/yuin/gopher-lua"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/luahost/sandbox"
	"github.com/sluice-mta/sluice/pipeline"
)

// initTimeout bounds building one pooled state: replaying the
// configuration program and running each script's top level.
var initTimeout = 5 * time.Second

// Host runs the Lua stages of one configuration on a shared pool of
// sandboxed Lua states. Every pooled state holds every Lua stage of the
// configuration (inline tables and scripts), so any state serves any
// stage. A Host is safe for concurrent use.
//
// Lifecycle: NewHost compiles everything and builds one state (so that a
// broken script fails at start, not at the first message); Stage returns
// the pipeline stages; Close releases the states after the pipeline has
// stopped calling them.
type Host struct {
	cfg      *config.Config
	log      *slog.Logger
	timeout  time.Duration
	cfgProto *lua.FunctionProto // nil when there is no inline stage
	specs    []config.StageSpec // Lua stages, in configuration order
	protos   []*lua.FunctionProto
	index    map[string]int     // stage name → index in specs
	masks    []uint8            // hooks each stage defines, from the first state
	defined  [][numHooks]string // "file:line" where each hook function is defined
	pool     *pool

	mu     sync.Mutex
	stages map[string]*Stage

	// limits are the node's rate-limit stores (SetRateLimits), read by
	// sluice.ratelimit.check at call time.
	limits atomic.Pointer[pipeline.RateLimits]
}

// NewHost compiles the configuration program (for inline stages, from
// cfg.Source or cfg.File) and every sluice.lua script once, then builds a
// first pooled state to check that each stage table is valid. log
// receives print, sluice.log and script errors (nil: slog.Default()).
func NewHost(cfg *config.Config, log *slog.Logger) (*Host, error) {
	if log == nil {
		log = slog.Default()
	}
	h := &Host{
		cfg:     cfg,
		log:     log,
		timeout: cfg.Lua.Timeout,
		index:   map[string]int{},
		stages:  map[string]*Stage{},
	}
	if h.timeout <= 0 {
		h.timeout = config.Defaults().Lua.Timeout
	}
	max := cfg.Lua.PoolSize
	if max <= 0 {
		max = config.DefaultLuaPoolSize()
	}
	h.pool = &pool{newState: h.newState, max: max}

	inline := false
	for _, spec := range cfg.Stages {
		var proto *lua.FunctionProto
		switch spec.Kind {
		case config.StageInline:
			inline = true
		case config.StageLua:
			p, err := sandbox.CompileFile(spec.Script)
			if err != nil {
				return nil, fmt.Errorf("lua stage %q: %w", spec.Name, err)
			}
			proto = p
		default:
			continue
		}
		if _, dup := h.index[spec.Name]; dup {
			return nil, fmt.Errorf("lua stage %q: name used twice", spec.Name)
		}
		h.index[spec.Name] = len(h.specs)
		h.specs = append(h.specs, spec)
		h.protos = append(h.protos, proto)
	}
	if inline {
		p, err := config.CompileSource(cfg)
		if err != nil {
			return nil, err
		}
		h.cfgProto = p
	}
	if len(h.specs) == 0 {
		return h, nil
	}
	st, err := h.newState()
	if err != nil {
		return nil, err
	}
	h.pool.created.Add(1)
	h.masks = make([]uint8, len(h.specs))
	h.defined = make([][numHooks]string, len(h.specs))
	for i := range h.specs {
		for j, fn := range st.fns[i] {
			if fn != nil {
				h.masks[i] |= 1 << j
				if fn.Proto != nil {
					h.defined[i][j] = fmt.Sprintf("%s:%d", fn.Proto.SourceName, fn.Proto.LineDefined)
					if j == hookRoute {
						if err := checkEdits(h.specs[i].Name, sandbox.Hooks[j], fn.Proto); err != nil {
							st.close()
							return nil, err
						}
					}
				}
			}
		}
	}
	h.pool.put(st)
	return h, nil
}

// Stage returns the pipeline stage for spec, which must be one of the
// configuration's Lua stages (Kind config.StageLua or config.StageInline,
// matched by name). The value is a *Stage: it has every hook method and
// lists the hooks its table defines through pipeline.HookLister, which
// pipeline.Compile honours. Calling Stage twice for one name returns the
// same stage.
func (h *Host) Stage(spec config.StageSpec) (pipeline.Stage, error) {
	if spec.Kind != config.StageLua && spec.Kind != config.StageInline {
		return nil, fmt.Errorf("luahost: stage %q is a %s stage, not a Lua stage", spec.Name, spec.Kind)
	}
	i, ok := h.index[spec.Name]
	if !ok {
		return nil, fmt.Errorf("luahost: stage %q is not in the configuration the host was built from", spec.Name)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if s, ok := h.stages[spec.Name]; ok {
		return s, nil
	}
	s := &Stage{
		h:    h,
		name: spec.Name,
		idx:  i,
		mask: h.masks[i],
		log:  h.log.With("stage", spec.Name),
	}
	h.stages[spec.Name] = s
	return s, nil
}

// Stats describes the state pool.
type Stats struct {
	Idle      int   // states in the free list
	Created   int64 // states built since NewHost
	Discarded int64 // states thrown away after an error or a timeout
}

// Stats returns pool counters (for metrics and tests).
func (h *Host) Stats() Stats {
	return Stats{Idle: h.pool.idle(), Created: h.pool.created.Load(), Discarded: h.pool.discarded.Load()}
}

// Close releases the pooled states. Call it after the pipeline has
// stopped; a call still running when Close is called finishes, and its
// state is closed instead of being returned. Later calls fail.
func (h *Host) Close() error {
	h.pool.close()
	return nil
}

// newState builds one pooled state: a sandbox with the sluice module, the
// configuration program replayed in runtime mode (for inline stages) and
// every script run in its own environment.
func (h *Host) newState() (st *state, err error) {
	sb := sandbox.New(h.log)
	sb.SetLimits(sandbox.Limits{MaxString: int(orDefault(h.cfg.Lua.MaxString, config.Defaults().Lua.MaxString))})
	st = newState(sb, len(h.specs))
	h.installRateLimit(st)
	st.maxHeader = int(orDefault(h.cfg.Lua.MaxHeader, config.Defaults().Lua.MaxHeader))
	defer func() {
		if err != nil {
			sb.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), initTimeout)
	defer cancel()
	sb.SetQuiet(true)
	defer sb.SetQuiet(false)

	var inline *lua.LTable
	if h.cfgProto != nil {
		inline = h.cfg.InstallRuntime(sb)
		if _, err := sb.Run(ctx, h.cfgProto, nil); err != nil {
			return nil, fmt.Errorf("lua: replaying %s: %w", h.cfg.File, err)
		}
	}
	for i, spec := range h.specs {
		var tbl lua.LValue
		if spec.Kind == config.StageInline {
			tbl = inline.RawGetString(spec.Name)
		} else {
			// Each script gets its own global environment, falling back to
			// the shared globals for reads, so scripts cannot clobber each
			// other's globals.
			env := sb.L.NewTable()
			mt := sb.L.NewTable()
			mt.RawSetString("__index", sb.L.Get(lua.GlobalsIndex))
			sb.L.SetMetatable(env, mt)
			tbl, err = sb.Run(ctx, h.protos[i], env)
			if err != nil {
				return nil, fmt.Errorf("lua stage %q: %s: %w", spec.Name, spec.Script, err)
			}
		}
		t, ok := tbl.(*lua.LTable)
		if !ok {
			return nil, fmt.Errorf("lua stage %q: want a table of hook functions, got %s", spec.Name, sandbox.Describe(tbl))
		}
		if _, err := sandbox.HookNames(t); err != nil {
			return nil, fmt.Errorf("lua stage %q: %w", spec.Name, err)
		}
		for j, name := range sandbox.Hooks {
			if fn, ok := t.RawGetString(name).(*lua.LFunction); ok {
				st.fns[i][j] = fn
			}
		}
	}
	return st, nil
}

// isTimeout reports whether err is a hook call stopped by its deadline.
func isTimeout(err error) bool { return errors.Is(err, context.DeadlineExceeded) }

func orDefault(v, def int64) int64 {
	if v <= 0 {
		return def
	}
	return v
}
