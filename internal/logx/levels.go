package logx

import (
	"context"
	"log/slog"
	"sync/atomic"
)

// Subsystems are the names a per-subsystem log level may be set for
// (sluice.logging { levels = { ... } }, docs/config.md): the "component"
// attribute of a logger (log.With("component", "queue")), and "stages"
// for the loggers of Lua and plugin stages (With("stage", name)).
var Subsystems = []string{"smtp", "http", "queue", "relay", "events", "shaping", "auth", "revoke",
	"control", "redis", "pebble", "stages"}

// Levels holds the minimum level of log records, overall and per
// subsystem. Swapped whole by Set, read by every log call: safe for
// concurrent use.
type Levels struct {
	t      atomic.Pointer[levelTable]
	pinned atomic.Bool // the base level came from the command line
}

type levelTable struct {
	base slog.Level
	by   map[string]slog.Level
}

// NewHandler wraps h so that records below the level of their logger's
// subsystem (else the base level) are dropped before they are built, and
// returns it with its Levels. h should accept every level (the wrapper
// decides).
func NewHandler(h slog.Handler, base slog.Level) (slog.Handler, *Levels) {
	lv := &Levels{}
	lv.t.Store(&levelTable{base: base})
	return &levelHandler{h: h, lv: lv}, lv
}

// Pin keeps the base level as it is through later Sets (a level given on
// the command line wins over the configuration's).
func (l *Levels) Pin() { l.pinned.Store(true) }

// Set replaces the levels: base (ignored when nil or pinned) and the
// per-subsystem levels by (nil: none).
func (l *Levels) Set(base *slog.Level, by map[string]slog.Level) {
	t := &levelTable{base: l.t.Load().base, by: by}
	if base != nil && !l.pinned.Load() {
		t.base = *base
	}
	l.t.Store(t)
}

// Of returns the Levels of a logger made by NewHandler (or derived from
// one with With), nil for another logger.
func Of(log *slog.Logger) *Levels {
	if h, ok := log.Handler().(*levelHandler); ok {
		return h.lv
	}
	return nil
}

func (l *Levels) min(sub string) slog.Level {
	t := l.t.Load()
	if lv, ok := t.by[sub]; ok && sub != "" {
		return lv
	}
	return t.base
}

type levelHandler struct {
	h   slog.Handler
	lv  *Levels
	sub string // the subsystem of the logger, "" for none
}

func (x *levelHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return level >= x.lv.min(x.sub) && x.h.Enabled(ctx, level)
}

func (x *levelHandler) Handle(ctx context.Context, r slog.Record) error { return x.h.Handle(ctx, r) }

func (x *levelHandler) WithAttrs(as []slog.Attr) slog.Handler {
	sub := x.sub
	for _, a := range as {
		switch {
		case a.Key == "component":
			sub = a.Value.String()
		case a.Key == "stage" && sub == "":
			sub = "stages"
		}
	}
	return &levelHandler{h: x.h.WithAttrs(as), lv: x.lv, sub: sub}
}

func (x *levelHandler) WithGroup(name string) slog.Handler {
	return &levelHandler{h: x.h.WithGroup(name), lv: x.lv, sub: x.sub}
}
