package config

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/internal/luahost/sandbox"
)

// evalTimeout bounds the evaluation of the configuration program (and of
// each script that sluice.lua loads), so that a loop in the configuration
// fails `sluice check` instead of hanging it. Tests shorten it.
var evalTimeout = 10 * time.Second

// Load reads and evaluates the configuration file at path. See Parse.
func Load(path string) (*Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, src)
}

// Parse evaluates src as the configuration file named file: file is used
// in error messages and its directory is where relative script and TLS
// paths resolve. It returns a Config with defaults filled in:
//
//   - Hostname: the OS hostname ("localhost" if unknown); Node: Hostname.
//   - every SMTP listener's limits: DefaultSMTPListener; its Hostname and
//     Delivery.Hostname: Config.Hostname.
//   - Spool.Path and Events.File: made absolute against the current
//     working directory (not the config file's directory).
//   - sluice.lua script paths, TLS certificate and key paths and
//     sluice.plugin commands with a slash: relative to the config file's
//     directory.
//   - Lua.PoolSize: 2*GOMAXPROCS+8 when 0.
//
// Load does not require a listener: `sluice serve` checks that itself.
// Errors name the file and line, e.g.
//
//	pipeline.lua:12: sluice.listen_smtp: unknown key "adress"
func Parse(file string, src []byte) (*Config, error) {
	cfg, err := parse(file, src)
	if err != nil && cfg != nil {
		// A secret put into the wrong key must not be printed by the
		// error about that key (check, serve and reload all show it).
		err = cfg.redact(err)
	}
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

// redact replaces, in err's text, every value sluice.env or
// sluice.read_file returned during the evaluation.
func (c *Config) redact(err error) error {
	if c.secrets == nil {
		return err
	}
	msg := err.Error()
	out := msg
	for name, v := range c.secrets.env {
		if len(v.value) >= 4 {
			out = strings.ReplaceAll(out, v.value, "<value of sluice.env(\""+name+"\")>")
		}
	}
	for path, v := range c.secrets.files {
		if len(v) >= 4 {
			out = strings.ReplaceAll(out, v, "<contents of sluice.read_file(\""+path+"\")>")
		}
	}
	if out == msg {
		return err
	}
	return errors.New(out)
}

// parse evaluates the file; on error it may return the partial Config
// (for its secrets, to redact the error).
func parse(file string, src []byte) (*Config, error) {
	proto, err := sandbox.Compile(file, src)
	if err != nil {
		return nil, err
	}
	cfg := Defaults()
	cfg.File = file
	cfg.Source = append([]byte(nil), src...)

	s := sandbox.New(slog.Default().With("config", file))
	defer s.Close()
	s.RecordErrors(true)
	ld := &loader{
		s: s, cfg: cfg, file: file, dir: filepath.Dir(file),
		once: map[string]int{}, addrs: map[string]int{}, names: map[string]int{}, stages: map[string]int{},
	}
	ld.install()

	ctx, cancel := context.WithTimeout(context.Background(), evalTimeout)
	defer cancel()
	_, err = s.Run(ctx, proto, nil)
	if rec := s.Err(); rec != nil {
		// A sluice function failed; report it even if a pcall caught it.
		return cfg, rec
	}
	if err != nil {
		return cfg, evalError(file, err)
	}
	if err := ld.finish(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

func evalError(file string, err error) error {
	var se *sandbox.ScriptError
	if errors.As(err, &se) {
		if errors.Is(se.Cause, context.DeadlineExceeded) {
			where := se.Where()
			if where == "" {
				where = file
			}
			return fmt.Errorf("%s: evaluation did not finish within %s (an endless loop?)", where, evalTimeout)
		}
		return errors.New(se.Message)
	}
	return err
}

// finish fills defaults that depend on the whole file and checks rules
// that span several calls.
func (ld *loader) finish() error {
	cfg := ld.cfg
	if cfg.Hostname == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "localhost"
		}
		cfg.Hostname = h
	}
	if cfg.Node == "" {
		cfg.Node = cfg.Hostname
	}
	for i := range cfg.SMTP {
		if cfg.SMTP[i].Hostname == "" {
			cfg.SMTP[i].Hostname = cfg.Hostname
		}
	}
	if cfg.Delivery.Hostname == "" {
		cfg.Delivery.Hostname = cfg.Hostname
	}
	if cfg.Delivery.RetryInitial > cfg.Delivery.RetryMax {
		return fmt.Errorf("%s:%d: sluice.delivery: retry.initial (%s) is longer than retry.max (%s)",
			ld.file, ld.once["sluice.delivery"], cfg.Delivery.RetryInitial, cfg.Delivery.RetryMax)
	}
	var err error
	if cfg.Spool.Path, err = filepath.Abs(cfg.Spool.Path); err != nil {
		return fmt.Errorf("%s: spool path: %w", ld.file, err)
	}
	if cfg.Events.File, err = filepath.Abs(cfg.Events.File); err != nil {
		return fmt.Errorf("%s: events file: %w", ld.file, err)
	}
	for i := range cfg.Events.Webhooks {
		w := &cfg.Events.Webhooks[i]
		if w.DeadLetter == "" {
			w.DeadLetter = filepath.Join(filepath.Dir(cfg.Events.File), "webhook-"+w.Name+".dead.jsonl")
		}
		if w.DeadLetter, err = filepath.Abs(w.DeadLetter); err != nil {
			return fmt.Errorf("%s: webhook %q dead-letter file: %w", ld.file, w.Name, err)
		}
	}
	if ld.rotationLine > 0 && cfg.DNSServer == nil {
		return fmt.Errorf("%s:%d: sluice.dkim_rotation: needs sluice.dns_server (keys rotate behind the CNAMEs to its zone; docs/rotation.md)",
			ld.file, ld.rotationLine)
	}
	if cfg.Lua.PoolSize == 0 {
		cfg.Lua.PoolSize = DefaultLuaPoolSize()
	}
	return nil
}

// DefaultLuaPoolSize is the number of idle Lua states kept when
// Lua.PoolSize is 0: 2*GOMAXPROCS+8.
func DefaultLuaPoolSize() int { return 2*runtime.GOMAXPROCS(0) + 8 }

// resolve makes a path from the config file relative to its directory.
func (ld *loader) resolve(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(ld.dir, p)
}

func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

func validHostname(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	return !strings.ContainsFunc(s, func(c rune) bool {
		return !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_')
	})
}
