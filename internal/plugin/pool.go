package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Pool shares plugin processes between the pipelines of successive
// reloads. A stage started through the pool whose identity — stage name,
// command, arguments, environment, config table and instances — matches a
// stage still running keeps that stage's processes (the host-side settings
// timeout, max_in_flight, on_error and hooks may differ); otherwise new
// processes start. Processes are reference-counted: they stop when the
// last stage using them is closed, which for a retired pipeline is after
// its transactions, and so its calls in flight, have finished.
//
// A Pool is safe for concurrent use. Its zero value is not usable: call
// NewPool.
type Pool struct {
	metrics *Metrics
	mu      sync.Mutex
	groups  map[string]*group
}

// NewPool returns an empty pool whose stages report to m (nil: no metrics).
func NewPool(m *Metrics) *Pool {
	return &Pool{metrics: m, groups: map[string]*group{}}
}

// identity is what must match for processes to be reused.
func identity(o Options) (string, error) {
	b, err := json.Marshal(struct {
		Name, Cmd string
		Args, Env []string
		Config    map[string]any
		Instances int
	}{o.Name, o.Cmd, o.Args, o.Env, o.Config, o.Instances})
	return string(b), err
}

// Start returns a stage for opts (see the package Start), reusing the
// processes of a running stage with the same identity. opts.Metrics is
// set to the pool's.
func (p *Pool) Start(opts Options) (*Stage, error) {
	opts.Metrics = p.metrics
	opts, err := normalize(opts)
	if err != nil {
		return nil, err
	}
	key, err := identity(opts)
	if err != nil {
		return nil, fmt.Errorf("plugin: config: %w", err)
	}
	p.mu.Lock()
	g := p.groups[key]
	if g != nil {
		g.refs++
	}
	p.mu.Unlock()
	if g != nil {
		g.log.Info("plugin processes kept", "pids", pids(g))
		return newStage(opts, g, p.release)
	}
	if g, err = startGroup(opts); err != nil {
		return nil, err
	}
	g.key, g.refs = key, 1
	p.mu.Lock()
	if p.groups[key] == nil {
		p.groups[key] = g
	}
	p.mu.Unlock()
	return newStage(opts, g, p.release)
}

func pids(g *group) []int {
	var out []int
	for _, sl := range g.slots {
		if inst := sl.get(); inst != nil {
			out = append(out, inst.pid)
		}
	}
	return out
}

// release drops a reference to g and stops it with the last one.
func (p *Pool) release(g *group) {
	p.mu.Lock()
	g.refs--
	last := g.refs == 0
	if last && p.groups[g.key] == g {
		delete(p.groups, g.key)
	}
	p.mu.Unlock()
	if last {
		g.close()
	}
}

// Check is the pool's readiness: nil, or an error naming each plugin
// stage that is crash looping (crashLoop restarts or more within a
// minute) or has no running instance.
func (p *Pool) Check() error {
	p.mu.Lock()
	gs := make([]*group, 0, len(p.groups))
	for _, g := range p.groups {
		gs = append(gs, g)
	}
	p.mu.Unlock()
	slices.SortFunc(gs, func(a, b *group) int {
		if a.opts.Name < b.opts.Name {
			return -1
		}
		if a.opts.Name > b.opts.Name {
			return 1
		}
		return 0
	})
	var errs []error
	now := time.Now()
	for _, g := range gs {
		if err := g.check(now); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
