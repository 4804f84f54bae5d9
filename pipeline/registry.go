package pipeline

import (
	"fmt"
	"sort"
	"sync"
)

// Factory builds a built-in stage from its options, as given in the config
// (e.g. sluice.builtin.relay { domains = {...} }). It must validate options
// and return an error naming a bad key; it must not start goroutines or open
// connections (that happens in an optional Start).
type Factory func(name string, opts map[string]any) (Stage, error)

var (
	regMu    sync.RWMutex
	registry = map[string]Factory{}
)

// Register makes a built-in stage kind available under kind. Call it from
// init(); a duplicate kind panics.
func Register(kind string, f Factory) {
	regMu.Lock()
	defer regMu.Unlock()
	if _, dup := registry[kind]; dup {
		panic(fmt.Sprintf("pipeline: built-in stage %q registered twice", kind))
	}
	registry[kind] = f
}

// Lookup returns the factory for kind.
func Lookup(kind string) (Factory, bool) {
	regMu.RLock()
	defer regMu.RUnlock()
	f, ok := registry[kind]
	return f, ok
}

// Kinds lists registered built-in stage kinds, sorted.
func Kinds() []string {
	regMu.RLock()
	defer regMu.RUnlock()
	out := make([]string, 0, len(registry))
	for k := range registry {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
