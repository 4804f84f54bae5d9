package server

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/relay"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// lifecycleStage records its lifecycle calls; option "fail" makes
// Validate fail.
type lifecycleStage struct {
	name string
	fail bool
	env  *pipeline.Env
}

var (
	lifeMu  sync.Mutex
	lifeLog []string
)

func logLife(s string) {
	lifeMu.Lock()
	lifeLog = append(lifeLog, s)
	lifeMu.Unlock()
}

func takeLife() string {
	lifeMu.Lock()
	defer lifeMu.Unlock()
	s := strings.Join(lifeLog, " ")
	lifeLog = nil
	return s
}

func (s *lifecycleStage) Name() string { return s.name }
func (s *lifecycleStage) Provision(env *pipeline.Env) error {
	s.env = env
	logLife("provision:" + s.name)
	if env.Logger == nil || env.Resolver == nil || env.Hostname == "" {
		return errors.New("incomplete env")
	}
	return nil
}
func (s *lifecycleStage) Validate() error {
	logLife("validate:" + s.name)
	if s.fail {
		return errors.New("bad option")
	}
	return nil
}
func (s *lifecycleStage) Close() error { logLife("close:" + s.name); return nil }

var (
	_ pipeline.Provisioner = (*lifecycleStage)(nil)
	_ pipeline.Validator   = (*lifecycleStage)(nil)
	_ pipeline.Closer      = (*lifecycleStage)(nil)
)

func init() {
	pipeline.Register("lifecycle_test", func(name string, opts map[string]any) (pipeline.Stage, error) {
		fail, _ := opts["fail"].(bool)
		return &lifecycleStage{name: name, fail: fail}, nil
	})
}

func load(t *testing.T, src string) *config.Config {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pipeline.lua")
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestBuiltinLifecycle: built-ins are provisioned with the node's shared
// parts, then validated; a failed validation closes every stage built so
// far, in reverse order, and names the stage and line.
func TestBuiltinLifecycle(t *testing.T) {
	res, err := dnsx.New(dnsx.Options{Server: "127.0.0.1:53"})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	takeLife()
	cfg := load(t, `local sluice = require("sluice")
sluice.node { hostname = "mx.test" }
sluice.listen_smtp { addr = "127.0.0.1:0" }
sluice.stage("a", sluice.builtin.lifecycle_test {})
sluice.stage("b", sluice.builtin.lifecycle_test {})
`)
	p, err := BuildPipeline(cfg, log, res)
	if err != nil {
		t.Fatal(err)
	}
	if got := takeLife(); got != "provision:a validate:a provision:b validate:b" {
		t.Fatalf("lifecycle %q", got)
	}
	st := p.Chain.Stages()[0].(*lifecycleStage)
	if st.env.Hostname != "mx.test" {
		t.Fatalf("env %+v", st.env)
	}
	relay.ClosePipeline(p)
	if got := takeLife(); got != "close:b close:a" {
		t.Fatalf("close order %q", got)
	}

	cfg = load(t, `local sluice = require("sluice")
sluice.listen_smtp { addr = "127.0.0.1:0" }
sluice.stage("a", sluice.builtin.lifecycle_test {})
sluice.stage("b", sluice.builtin.lifecycle_test { fail = true })
`)
	_, err = BuildPipeline(cfg, log, res)
	if err == nil || !strings.Contains(err.Error(), `pipeline.lua:4: stage "b": bad option`) {
		t.Fatalf("err %v", err)
	}
	if got := takeLife(); got != "provision:a validate:a provision:b validate:b close:b close:a" {
		t.Fatalf("lifecycle on failure %q", got)
	}
	if err := Validate(cfg, log); err == nil {
		t.Fatal("Validate accepted what BuildPipeline refused")
	}
}

// TestRestartNeeded names the settings a reload cannot apply.
func TestRestartNeeded(t *testing.T) {
	a := load(t, `local sluice = require("sluice")
sluice.listen_smtp { addr = "127.0.0.1:2525" }
sluice.stage("s", { on_rcpt = function() end })
`)
	b := load(t, `local sluice = require("sluice")
sluice.listen_smtp { addr = "127.0.0.1:2526" }
sluice.spool { path = "./other" }
sluice.stage("s", { on_rcpt = function() return sluice.accept() end })
sluice.stage_timeout("5s")
`)
	got := strings.Join(RestartNeeded(a, b), ",")
	if got != "sluice.listen_smtp,sluice.spool" {
		t.Fatalf("RestartNeeded = %q", got)
	}
	// Shaping: the same file with other contents needs a restart too.
	dir := t.TempDir()
	toml := filepath.Join(dir, "shaping.toml")
	cfgText := `sluice.shaping { files = { "` + toml + `" } }
sluice.egress { sources = { { name = "a", address = "127.0.0.2" } } }`
	os.WriteFile(toml, []byte("[\"default\"]\nconnection_limit = 2\n"), 0o644)
	c := load(t, cfgText)
	if got := RestartNeeded(c, load(t, cfgText)); len(got) != 0 {
		t.Errorf("same shaping: RestartNeeded = %q", got)
	}
	os.WriteFile(toml, []byte("[\"default\"]\nconnection_limit = 3\n"), 0o644)
	d := load(t, strings.Replace(cfgText, "127.0.0.2", "127.0.0.3", 1))
	if got := strings.Join(RestartNeeded(c, d), ","); got != "sluice.egress,sluice.shaping" {
		t.Errorf("changed shaping file and egress: RestartNeeded = %q", got)
	}
}

// TestAdminListener: /metrics is Prometheus text a parser reads, with the
// spool, queue and event-consumer metrics; /readyz is ready while the
// spool takes mail; an address outside the allow list gets 403.
func TestAdminListener(t *testing.T) {
	for _, tc := range []struct {
		allow  string
		status int
	}{{`"127.0.0.1"`, 200}, {`"10.0.0.0/8"`, 403}} {
		dir := t.TempDir()
		addr := testutil.FreeAddr(t)
		cfg := load(t, `local sluice = require("sluice")
sluice.spool { path = "`+dir+`/spool" }
sluice.events { file = "`+dir+`/events.jsonl" }
sluice.listen_smtp { addr = "127.0.0.1:0" }
sluice.listen_admin { addr = "`+addr+`", allow = { `+tc.allow+` } }
`)
		s, err := New(cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Start(); err != nil {
			t.Fatal(err)
		}
		get := func(path string) (int, string) { return testutil.HTTPGet(t, "http://"+addr+path) }
		if code, body := get("/readyz"); code != tc.status {
			t.Errorf("allow %s: /readyz %d %q, want %d", tc.allow, code, body, tc.status)
		}
		code, body := get("/metrics")
		if code != tc.status {
			t.Errorf("allow %s: /metrics %d, want %d", tc.allow, code, tc.status)
		}
		if code == 200 {
			parser := expfmt.NewTextParser(model.UTF8Validation)
			fams, err := parser.TextToMetricFamilies(strings.NewReader(body))
			if err != nil {
				t.Fatalf("/metrics does not parse: %v", err)
			}
			for _, name := range []string{"sluice_spool_size_bytes", "sluice_spool_full", "sluice_spool_free_bytes", "sluice_spool_writable", "sluice_spool_flushed_bytes_total", "sluice_spool_compacted_bytes_total", "sluice_spool_compaction_seconds_total", "sluice_queue_messages",
				"sluice_events_exported_total", "sluice_event_consumer_lag_events", "go_goroutines", "process_resident_memory_bytes"} {
				if fams[name] == nil {
					t.Errorf("/metrics has no %s", name)
				}
			}
			if f := fams["sluice_spool_full"]; f != nil && f.Metric[0].GetGauge().GetValue() != 0 {
				t.Errorf("sluice_spool_full = %v on an empty spool", f.Metric[0].GetGauge().GetValue())
			}
			if f := fams["sluice_spool_size_bytes"]; f != nil && f.Metric[0].GetGauge().GetValue() <= 0 {
				t.Errorf("sluice_spool_size_bytes = %v", f.Metric[0].GetGauge().GetValue())
			}
		}
		if err := s.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}
