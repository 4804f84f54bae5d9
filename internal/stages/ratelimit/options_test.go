package ratelimit

import (
	"strings"
	"testing"
)

// TestOptionErrors: mistakes an operator makes get an error that names
// the option and says what to write, never a Go type name.
func TestOptionErrors(t *testing.T) {
	for _, c := range []struct {
		opts map[string]any
		want string
	}{
		{map[string]any{"limits": map[string]any{"key": "tenant", "rate": "2/s"}},
			`limits: want a list of tables, got one table with named fields; wrap it: limits = { {`},
		{map[string]any{"limits": "tenant"}, `limits: want a list of tables like { { key = "tenant", rate = "1000/hour" } }, got tenant`},
		{map[string]any{"limits": []any{map[string]any{"key": "tenant", "rate": int64(5)}}}, `limits[1].rate: want a string like "100/minute", got 5`},
		{map[string]any{"limits": []any{map[string]any{"key": "tenant"}}}, `limits[1].rate: required`},
		{map[string]any{"key": "tenant", "rate": "1/1000000h"}, `rate: rate "1/1000000h": the period must be at most 366 days`},
	} {
		_, err := parseOptions("l", c.opts)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "map[") {
			t.Errorf("%v: %v, want %q", c.opts, err, c.want)
		}
	}
}
