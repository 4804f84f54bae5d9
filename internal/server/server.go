// Package server assembles one Sluice node from its configuration and owns
// its lifecycle.
//
//	New:    validate everything that can be checked without side effects
//	        (the same Validate `sluice check` runs), build the pipeline.
//	Start:  start the components in order: spool, event exporter, queue,
//	        housekeeping, the relay, the SMTP and HTTP listeners, the
//	        control socket. If one fails, those started stop in reverse.
//	Reload: load the configuration again; if it validates, new
//	        transactions use the new pipeline while those in flight finish
//	        on the old one; if not, the old one keeps serving.
//	Stop:   stop the components in reverse order, then close the pipeline.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sluice-mta/sluice/internal/apikey"
	"github.com/sluice-mta/sluice/internal/auth"
	"github.com/sluice-mta/sluice/internal/bounce"
	"github.com/sluice-mta/sluice/internal/capture"
	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/domains"
	"github.com/sluice-mta/sluice/internal/events"
	"github.com/sluice-mta/sluice/internal/httpapi"
	"github.com/sluice-mta/sluice/internal/luahost"
	"github.com/sluice-mta/sluice/internal/metrics"
	"github.com/sluice-mta/sluice/internal/mtasts"
	"github.com/sluice-mta/sluice/internal/plugin"
	"github.com/sluice-mta/sluice/internal/queue"
	"github.com/sluice-mta/sluice/internal/ratelimit"
	"github.com/sluice-mta/sluice/internal/relay"
	"github.com/sluice-mta/sluice/internal/revoke"
	"github.com/sluice-mta/sluice/internal/shaping"
	"github.com/sluice-mta/sluice/internal/smtpsrc"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/token"
	"github.com/sluice-mta/sluice/internal/tracking"
	"github.com/sluice-mta/sluice/pipeline"
)

// Server is one running node. Start, Reload and Stop may be called from
// different goroutines; Reload calls are serialised.
type Server struct {
	cfg  *config.Config
	log  *slog.Logger
	pipe *relay.Pipeline // built by New, handed to the relay at Start
	// domains is the registry of sending domains, opened with the spool
	// (domains.go); nil before.
	domains atomic.Pointer[domains.Registry]
	// static is the configured dkim_sign keys the DNS listener publishes
	// (domains.go); rotation the current sluice.dkim_rotation.
	static   atomic.Pointer[staticZone]
	rotation atomic.Pointer[config.DKIMRotation]
	res      *dnsx.Client

	sp     *spool.Spool
	q      *queue.Queue
	shaper *shaping.Shaper // nil: no sluice.shaping or sluice.egress
	relay  *relay.Relay
	ex     *events.Exporter
	sinks  []events.Sink
	file   *events.FileSink
	keys   *apikey.Store
	tokIss *token.Issuer   // nil: no signing key (sluice.tokens)
	tokVer *token.Verifier // nil: tokens disabled
	// useTokens installs new token keys in each listener (Reload).
	// Appended by the listeners' start, under reloadMu.
	useTokens []func(*token.Issuer, *token.Verifier)
	// revoked is the token revocation list (nil without sluice.tokens at
	// start; revocations.go).
	revoked *revoke.List
	// sandbox is the capture store of sluice.sandbox (sandbox.go); nil
	// without it.
	sandbox *capture.Store
	control *controlServer
	metrics *prometheus.Registry // one per node; served by the admin listener
	// node is the message-path metrics on metrics (metrics.Node).
	node *metrics.Node
	// deadLetters is sluice_event_dead_letters_total, shared by the sinks.
	deadLetters *prometheus.CounterVec
	wg          sync.WaitGroup
	errc        chan error

	started  []component // in start order
	reloadMu sync.Mutex
	exStop   context.CancelFunc
	hkStop   func()
	// backlog is the Kafka sink's backlog budget (nil: none); the relay
	// consults it at each commit.
	backlog atomic.Pointer[events.Backlog]
	// plugins shares plugin processes between the pipelines of reloads
	// and feeds /readyz and the sluice_plugin_* metrics.
	plugins *plugin.Pool
	// redis is sluice.redis's client (nil: not configured), shared by the
	// stages of every pipeline and closed by Stop.
	redis *pipeline.Redis
	// limits are the node's rate-limit stores (memory, and Redis on
	// redis), shared by every stage and Lua state of every pipeline, so
	// limits hold across reloads.
	limits *pipeline.RateLimits
	// tracker is the engagement tracker (sluice.tracking), shared by
	// every pipeline and HTTP listener; nil without the section.
	tracker *tracking.Tracker
	// tlsrpt is TLS reporting (tlsrpt.go), built with the spool.
	tlsrpt *tlsReporting
}

// component is one long-lived part of the node.
type component struct {
	name  string
	start func() error
	stop  func(ctx context.Context) error
}

// New validates cfg (see Validate) and builds its pipeline. It opens
// nothing: no spool, no listener, no file.
func New(cfg *config.Config, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{cfg: cfg, log: log, errc: make(chan error, 16), metrics: metrics.NewRegistry()}
	if err := checkNode(cfg); err != nil {
		return nil, err
	}
	res, err := resolver(cfg)
	if err != nil {
		return nil, err
	}
	s.res = res
	if s.node, err = metrics.NewNode(s.metrics); err != nil {
		return nil, err
	}
	pm, err := plugin.NewMetrics(s.metrics)
	if err != nil {
		return nil, err
	}
	s.plugins = plugin.NewPool(pm)
	if s.redis, err = NewRedis(cfg); err != nil {
		return nil, err
	}
	if s.redis != nil {
		useRedisLogger(log)
	}
	rm, err := ratelimit.NewMetrics(s.metrics)
	if err != nil {
		closeRedis(s.redis)
		return nil, err
	}
	s.limits = ratelimit.NewNode(s.redis, rm, log)
	if s.tracker, err = newTracker(cfg, log); err != nil {
		closeRedis(s.redis)
		return nil, err
	}
	p, err := buildPipeline(cfg, log, res, shared{pool: s.plugins, redis: s.redis, limits: s.limits, metrics: s.registerer(), node: s.node, onStages: s.useDomainKeys, tracker: s.tracker})
	if err != nil {
		closeRedis(s.redis)
		return nil, err
	}
	s.pipe = p
	return s, nil
}

// Validate runs every check `serve` runs before it opens anything: the
// pipeline builds (Lua compiles, built-ins provision and validate), the
// listeners' settings and TLS files, the resolver address, and what this
// version cannot serve. `sluice check` calls it; New calls the same
// checks. It creates no file or directory.
func Validate(cfg *config.Config, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := checkNode(cfg); err != nil {
		return err
	}
	res, err := resolver(cfg)
	if err != nil {
		return err
	}
	p, err := BuildPipeline(cfg, log, res)
	if err != nil {
		return err
	}
	relay.ClosePipeline(p)
	return nil
}

// checkNode validates the parts of cfg outside the pipeline.
func checkNode(cfg *config.Config) error {
	if len(cfg.SMTP) == 0 && len(cfg.HTTP) == 0 {
		return fmt.Errorf("%s has no listener; add sluice.listen_smtp { addr = \"127.0.0.1:2525\" } or sluice.listen_http { ... }", cfg.File)
	}
	if cfg.Events.Kafka != nil {
		if _, err := kafkaOptions(cfg, nil, nil); err != nil {
			return err
		}
	}
	if t := cfg.Tokens; t.Enabled() {
		if _, _, err := token.Load(t.SigningKey, t.PublicKeys, t.MaxLifetime, nil); err != nil {
			return fmt.Errorf("sluice.tokens: %w", err)
		}
	}
	if _, err := loadBounces(cfg); err != nil {
		return err
	}
	if err := checkSandbox(cfg); err != nil {
		return err
	}
	for _, l := range cfg.SMTP {
		if err := smtpsrc.CheckListener(l); err != nil {
			return fmt.Errorf("%s: %w", cfg.File, err)
		}
	}
	if cfg.Auth.Users != "" {
		if _, err := auth.OpenUsers(cfg.Auth.Users, slog.New(slog.DiscardHandler)); err != nil {
			return fmt.Errorf("%s: sluice.auth: %w", cfg.File, err)
		}
	}
	for _, l := range cfg.HTTP {
		if err := httpapi.CheckListener(l); err != nil {
			return fmt.Errorf("%s: %w", cfg.File, err)
		}
	}
	return nil
}

// loadBounces compiles the bounce rules of sluice.bounces.
func loadBounces(cfg *config.Config) (*bounce.Classifier, error) {
	bc, err := bounce.Load(cfg.Bounces.Rules, cfg.Bounces.DefaultRules)
	if err != nil {
		return nil, fmt.Errorf("%s: sluice.bounces: %w", cfg.File, err)
	}
	return bc, nil
}

func resolver(cfg *config.Config) (*dnsx.Client, error) {
	res, err := dnsx.New(dnsx.Options{Server: cfg.Delivery.Resolver, DNSSEC: cfg.Delivery.DANE})
	if err != nil {
		return nil, fmt.Errorf("%s: sluice.delivery { resolver = ... }: %w", cfg.File, err)
	}
	return res, nil
}

// BuildPipeline builds cfg's stages (built-ins from the registry, then
// provisioned and validated; Lua and inline stages from a new Lua host)
// and compiles the chain. On error everything built is closed.
// A Redis client for sluice.redis is made for the pipeline and closed with
// it.
func BuildPipeline(cfg *config.Config, log *slog.Logger, res dnsx.Resolver) (*relay.Pipeline, error) {
	rds, err := NewRedis(cfg)
	if err != nil {
		return nil, err
	}
	return buildPipeline(cfg, log, res, shared{redis: rds, ownRedis: true})
}

// shared is what the pipelines of one node share.
type shared struct {
	pool     *plugin.Pool          // nil: each plugin stage starts its own processes
	metrics  prometheus.Registerer // nil: stages register no metrics
	node     *metrics.Node         // nil: stage calls are not timed
	redis    *pipeline.Redis       // nil: no sluice.redis
	ownRedis bool                  // close redis with the pipeline
	// limits are the node's rate-limit stores; nil: the pipeline gets
	// its own (BuildPipeline, for check and test).
	limits *pipeline.RateLimits
	// trace is the chain's observer (nil in production; see
	// BuildTracedPipeline).
	trace func(pipeline.TraceCall)
	// onStages, when set, sees the built stages before the chain is
	// compiled (the node hooks dkim_sign to registered domains' keys).
	onStages func([]pipeline.Stage)
	// tracker rewrites messages for tracking before signing; nil: the
	// pipeline builds its own from sluice.tracking (check and test).
	tracker *tracking.Tracker
}

// buildPipeline is BuildPipeline with the node's shared parts.
func buildPipeline(cfg *config.Config, log *slog.Logger, res dnsx.Resolver, sh shared) (*relay.Pipeline, error) {
	if sh.limits == nil {
		rm, err := ratelimit.NewMetrics(nil)
		if err != nil {
			return nil, err
		}
		sh.limits = ratelimit.NewNode(sh.redis, rm, log)
	}
	if sh.tracker == nil {
		var err error
		if sh.tracker, err = newTracker(cfg, log); err != nil {
			return nil, err
		}
	}
	var rewriter pipeline.BodyRewriter
	if sh.tracker != nil {
		rewriter = sh.tracker
	}
	host, err := luahost.NewHost(cfg, log)
	if err != nil {
		return nil, err
	}
	host.SetRateLimits(sh.limits)
	var stages []pipeline.Stage
	closeAll := func() {
		for i := len(stages) - 1; i >= 0; i-- {
			if c, ok := stages[i].(pipeline.Closer); ok {
				if err := c.Close(); err != nil {
					log.Warn("stage close failed", "stage", stages[i].Name(), "err", err)
				}
			}
		}
		host.Close()
		if sh.ownRedis {
			closeRedis(sh.redis)
		}
	}
	hostname := cfg.Hostname
	for _, spec := range cfg.Stages {
		st, err := buildStage(cfg, spec, host, log, res, hostname, sh)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("%s:%d: stage %q: %w", cfg.File, spec.Line, spec.Name, err)
		}
		stages = append(stages, st)
	}
	if sh.onStages != nil {
		sh.onStages(stages)
	}
	chain, err := pipeline.Compile(stages, pipeline.ChainOptions{
		StageTimeout: cfg.StageTimeout, LocalDomains: cfg.LocalDomains, Logger: log, RecoverPanics: true,
		AuthServID: hostname, Trace: sh.trace, StageTimer: stageTimer(sh.node), Rewriter: rewriter,
	})
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("%s: %w", cfg.File, err)
	}
	return relay.NewPipeline(chain, closeAll), nil
}

// buildStage builds one stage and runs its lifecycle up to validation.
func buildStage(cfg *config.Config, spec config.StageSpec, host *luahost.Host, log *slog.Logger, res dnsx.Resolver, hostname string, sh shared) (pipeline.Stage, error) {
	switch spec.Kind {
	case config.StageBuiltin:
		f, ok := pipeline.Lookup(spec.Builtin)
		if !ok {
			return nil, config.UnknownBuiltin(spec.Builtin)
		}
		st, err := f(spec.Name, spec.Options)
		if err != nil {
			return nil, err
		}
		if p, ok := st.(pipeline.Provisioner); ok {
			env := &pipeline.Env{Logger: log.With("stage", spec.Name), Resolver: dnsx.ForStages(res), Hostname: hostname, Node: cfg.Node, Redis: sh.redis,
				RateLimits: sh.limits, ConfigDir: configDir(cfg), Metrics: sh.metrics}
			if err := p.Provision(env); err != nil {
				closeStage(st)
				return nil, err
			}
		}
		if v, ok := st.(pipeline.Validator); ok {
			if err := v.Validate(); err != nil {
				closeStage(st)
				return nil, err
			}
		}
		return st, nil
	case config.StagePlugin:
		p := spec.Plugin
		opts := plugin.Options{Name: spec.Name, Cmd: p.Cmd, Args: p.Args, Env: p.Env, Timeout: p.Timeout,
			MaxInFlight: p.MaxInFlight, Instances: p.Instances, OnError: p.OnError, Config: p.Config, Hooks: p.Hooks, Logger: log}
		if sh.pool != nil {
			return sh.pool.Start(opts)
		}
		return plugin.Start(opts)
	}
	return host.Stage(spec)
}

func closeStage(st pipeline.Stage) {
	if c, ok := st.(pipeline.Closer); ok {
		_ = c.Close()
	}
}

// Chain returns the current compiled pipeline.
func (s *Server) Chain() *pipeline.Chain {
	if s.relay != nil {
		return s.relay.Chain()
	}
	return s.pipe.Chain
}

// dialer adapts delivery.Dialer to queue.Dialer.
type dialer struct{ d *delivery.Dialer }

func (d dialer) Dial(ctx context.Context, r *pipeline.Route, domain string) (queue.Conn, error) {
	sess, err := d.d.Dial(ctx, r, domain)
	if err != nil {
		return nil, err
	}
	return sess, nil
}

// Start starts the components in order; if one fails, those started are
// stopped in reverse order and the error is returned.
func (s *Server) Start() error {
	for _, c := range s.components() {
		if err := c.start(); err != nil {
			s.stopStarted(context.Background())
			return err
		}
		s.started = append(s.started, c)
	}
	return nil
}

// components lists the node's parts in start order.
func (s *Server) components() []component {
	cfg := s.cfg
	var cs []component
	cs = append(cs, component{name: "spool",
		start: func() error {
			var err error
			if mf := minFree(cfg.Spool.MinFree); mf > 0 && mf < int64(cfg.Spool.MemtableMB)<<20*11/10 {
				// Pebble preallocates each WAL file at 110% of the memtable
				// size (pebble v2 DB.walPreallocateSize) and flushes a
				// memtable at once: a smaller reserve can be overrun by one
				// of them, and Pebble then meets ENOSPC.
				s.log.Warn("spool: min_free is less than 110% of memtable_mb; one WAL preallocation or memtable flush can pass the reserve and fill the disk: raise min_free or lower memtable_mb",
					"min_free", mf, "memtable_mb", cfg.Spool.MemtableMB)
			}
			s.sp, err = spool.Open(cfg.Spool.Path, spool.Options{MemtableMB: cfg.Spool.MemtableMB, WALRecycling: cfg.Spool.WALRecycling, NoWALZeroAhead: !cfg.Spool.WALZeroAhead, Logger: s.log, Node: cfg.Node, MinFree: minFree(cfg.Spool.MinFree)})
			if err != nil {
				return err
			}
			if n, err := s.sp.CollectOrphans(); err != nil {
				return fmt.Errorf("spool: %w", err)
			} else if n > 0 {
				s.log.Info("deleted settled messages left by a crash", "n", n)
			}
			// The queue and the relay are built here (no goroutine yet),
			// so every later component can use them.
			d := delivery.NewDialer(cfg.Delivery, s.res)
			d.Hostname = cfg.Delivery.Hostname
			if d.Hostname == "" {
				d.Hostname = cfg.Hostname
			}
			d.Logger = s.log
			d.Self = delivery.NewSelf(cfg)
			if !cfg.Delivery.NoMTASTS {
				d.MTASTS = &mtasts.Cache{Resolver: s.res}
			}
			d.DANE = cfg.Delivery.DANE
			if w := cfg.Delivery.DANEWarning(); w != "" {
				s.log.Warn(w)
			}
			if s.tlsrpt, err = s.newTLSReporting(cfg, d); err != nil {
				return err
			}
			bc, err := loadBounces(cfg)
			if err != nil {
				return err
			}
			if err := bc.Register(s.metrics); err != nil {
				return err
			}
			if s.shaper, err = s.newShaper(cfg); err != nil {
				return err
			}
			if s.sandbox, err = s.openSandbox(cfg); err != nil {
				return err
			}
			s.q = queue.New(s.sp, capture.Dialer{Next: dialer{d}, Store: s.sandbox}, queue.Options{Shaper: s.shaper,
				MaxConnections: cfg.Delivery.MaxConnections, MaxPerDestination: cfg.Delivery.MaxPerDestination,
				MaxMessagesPerConn: cfg.Delivery.MaxMessagesPerConn, IdleTimeout: cfg.Delivery.IdleTimeout,
				RetryInitial: cfg.Delivery.RetryInitial, RetryMax: cfg.Delivery.RetryMax,
				RetryFactor: cfg.Delivery.RetryFactor, RetryJitter: cfg.Delivery.RetryJitter,
				QueueLifetime: cfg.Delivery.QueueLifetime, Logger: s.log, Bounces: bc, Metrics: s.node,
			})
			// The relay is the transaction owner for every source, bounces
			// included: they enter through it.
			s.sp.SetSuppressionPolicy(suppressionPolicy(cfg))
			if err := s.openDomains(); err != nil {
				return fmt.Errorf("spool: sending domains: %w", err)
			}
			ro := relay.Options{Hostname: cfg.Hostname, Logger: s.log, DelayWarning: cfg.Delivery.DelayWarning,
				Suppressions: s.sp, Domains: s.domains.Load(), Metrics: s.node, Admit: func() error { return s.backlog.Load().Check() },
				Guard:   auth.NewGuard(auth.GuardOptions{Free: cfg.Auth.LockoutAfter, Base: cfg.Auth.LockoutBase, Max: cfg.Auth.LockoutMax}),
				Sandbox: sandboxRouter(cfg), Inspect: s.tlsrpt.inbound.Inspect}
			if cfg.Auth.Users != "" {
				users, err := auth.OpenUsers(cfg.Auth.Users, s.log)
				if err != nil {
					return err
				}
				ro.Users = users
				s.log.Info("users file loaded", "path", users.Path(), "users", users.Len())
			}
			s.relay = relay.NewSpool(s.pipe, s.sp, s.q, ro)
			if s.tracker != nil {
				s.tracker.UseSpool(s.sp)
			}
			s.q.SetBouncer(s.relay)
			s.q.SetNotifier(s.relay)
			return s.registerCoreMetrics()
		},
		stop: func(context.Context) error {
			if s.tlsrpt != nil && s.tlsrpt.rec != nil {
				// The sessions of the last deliveries, before the spool
				// closes.
				if err := s.tlsrpt.rec.Flush(); err != nil {
					s.log.Warn("tls reporting: saving the counts", "err", err)
				}
			}
			if s.sandbox != nil {
				if err := s.sandbox.Close(); err != nil {
					s.log.Warn("closing the sandbox store", "err", err)
				}
			}
			return s.sp.Close()
		},
	})
	cs = append(cs, component{name: "events",
		start: func() error {
			fs, err := events.OpenFile(cfg.Events.File)
			if err != nil {
				return err
			}
			s.file = fs
			s.sinks = []events.Sink{fs}
			// One dead-letter counter for every sink that dead-letters.
			if s.deadLetters, err = events.NewDeadLetterCounter(s.metrics); err != nil {
				fs.Close()
				return err
			}
			if err := s.startKafka(); err != nil {
				fs.Close()
				return err
			}
			if err := s.startWebhooks(cfg); err != nil {
				for _, sk := range s.sinks {
					sk.Close()
				}
				return err
			}
			// on_event hooks run on the pipeline current at each batch: a
			// consumer of their own, so they never slow a sink.
			s.ex, err = events.NewExporter(s.sp, s.sinks, events.Options{
				OnEvent:    func(ctx context.Context, ev *pipeline.Event) { s.relay.Chain().Event(ctx, ev) },
				WantEvents: func() bool { return s.relay.Chain().HasEventHooks() },
				Logger:     s.log,
				Metrics:    s.metrics,
			})
			if err != nil {
				for _, sk := range s.sinks {
					sk.Close()
				}
				return err
			}
			if s.metrics != nil {
				if err := s.metrics.Register(s.ex.AgeCollector()); err != nil {
					for _, sk := range s.sinks {
						sk.Close()
					}
					return fmt.Errorf("events: registering metrics: %w", err)
				}
			}
			ctx, cancel := context.WithCancel(context.Background())
			s.watchBacklog(ctx)
			go s.ex.Run(ctx)
			s.exStop = cancel
			return nil
		},
		stop: func(context.Context) error {
			s.exStop()
			<-s.ex.Done()
			for _, sk := range s.sinks {
				sk.Close()
			}
			return nil
		},
	})
	cs = append(cs, component{name: "queue",
		start: func() error {
			n, err := s.q.Load()
			if err != nil {
				return fmt.Errorf("rebuilding queues from the spool: %w", err)
			}
			s.log.Info("spool opened", "path", cfg.Spool.Path, "queued_recipients", n)
			s.q.Start()
			return nil
		},
		stop: func(ctx context.Context) error {
			s.q.Stop(ctx)
			if s.shaper != nil {
				s.shaper.Stop()
			}
			return nil
		},
	})
	cs = append(cs, component{name: "housekeeping",
		start: func() error {
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); s.housekeeping(ctx) }()
			s.hkStop = func() { cancel(); <-done }
			return nil
		},
		stop: func(context.Context) error { s.hkStop(); return nil },
	})
	cs = append(cs, component{name: "relay",
		start: func() error { return nil },
		stop: func(context.Context) error {
			// Sessions still running after their grace may still commit:
			// wait (a bounded while longer) so the spool is not closed
			// under a commit.
			wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if !s.relay.Close(wctx) {
				s.log.Warn("submissions still running after shutdown; closing the spool anyway")
			}
			return nil
		},
	})
	// After the relay: it stops first, so a report being queued is not
	// cut off by the relay closing.
	cs = append(cs, component{name: "tls reporting",
		start: func() error { s.tlsrpt.start(); return nil },
		stop: func(context.Context) error {
			if s.tlsrpt.stop != nil {
				s.tlsrpt.stop()
			}
			return nil
		},
	})
	if d := cfg.DNSServer; d != nil {
		var stop func()
		cs = append(cs, component{name: "dns " + d.Listen,
			start: func() error {
				rc := cfg.DKIMRotation
				s.rotation.Store(&rc)
				var err error
				stop, err = s.startDNS(d)
				return err
			},
			stop: func(context.Context) error { stop(); return nil },
		})
	}
	if t := cfg.Tokens; t.Enabled() {
		cs = append(cs, component{name: "tokens",
			start: func() error {
				// Revocations load from the spool (and Redis) before
				// any listener accepts (revocations.go).
				if err := s.startRevocations(cfg); err != nil {
					return err
				}
				var err error
				s.tokIss, s.tokVer, err = token.Load(t.SigningKey, t.PublicKeys, t.MaxLifetime, s.revoker())
				if err != nil {
					s.revoked.Stop()
				}
				return err
			},
			stop: func(context.Context) error { s.revoked.Stop(); return nil },
		})
	}
	for _, l := range cfg.SMTP {
		var srv *smtpsrc.Server // set by start, used by stop
		cs = append(cs, component{name: "smtp " + l.Addr,
			start: func() error {
				var err error
				srv, err = smtpsrc.New(l, s.relay, s.log, smtpsrc.WithSpillDir(cfg.Spool.Path))
				if err != nil {
					return fmt.Errorf("smtp listener %s: %w", l.Addr, err)
				}
				srv.UseTokens(s.tokVer)
				s.onTokens(func(_ *token.Issuer, v *token.Verifier) { srv.UseTokens(v) })
				ln, err := net.Listen("tcp", l.Addr)
				if err != nil {
					return fmt.Errorf("smtp listener %s: %w", l.Addr, err)
				}
				s.serve("smtp "+l.Addr, func() error { return srv.Serve(ln) })
				s.log.Info("listening", "proto", "smtp", "addr", ln.Addr().String(), "tls", l.TLS != nil, "implicit_tls", l.ImplicitTLS)
				return nil
			},
			stop: func(ctx context.Context) error {
				if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, smtpsrc.ErrServerClosed) {
					s.log.Warn("smtp shutdown", "err", err)
				}
				return nil
			},
		})
	}
	if len(cfg.HTTP) > 0 {
		cs = append(cs, component{name: "api keys",
			start: func() error {
				var err error
				s.keys, err = apikey.Open(cfg.APIKeysFile())
				return err
			},
			stop: func(context.Context) error { return nil },
		})
	}
	for _, l := range cfg.HTTP {
		var srv *httpapi.Server // set by start, used by stop
		cs = append(cs, component{name: "http " + l.Addr,
			start: func() error {
				var err error
				srv, err = httpapi.New(l, s.relay, s.sp, s.keys, cfg.Hostname, s.log)
				if err != nil {
					return fmt.Errorf("http listener %s: %w", l.Addr, err)
				}
				srv.UseTokens(s.tokIss, s.tokVer)
				srv.UseRevocations(s.revoked)
				srv.UseDomains(s.domains.Load())
				srv.UseQueue(s.q)
				if s.tlsrpt.rec != nil {
					srv.UseTLSReports(tlsReportsAPI{s.tlsrpt})
				}
				if s.tracker != nil {
					srv.UseTracking(s.tracker)
				}
				srv.UseSandbox(s.sandbox)
				s.onTokens(srv.UseTokens)
				ln, err := net.Listen("tcp", l.Addr)
				if err != nil {
					return fmt.Errorf("http listener %s: %w", l.Addr, err)
				}
				s.serve("http "+l.Addr, func() error { return srv.Serve(ln) })
				s.log.Info("listening", "proto", "http", "addr", ln.Addr().String(), "tls", l.TLS != nil)
				return nil
			},
			stop: func(ctx context.Context) error {
				if err := srv.Shutdown(ctx); err != nil {
					s.log.Warn("http shutdown", "err", err)
				}
				return nil
			},
		})
	}
	if a := cfg.Admin; a != nil {
		var srv *http.Server // set by start, used by stop
		cs = append(cs, component{name: "admin " + a.Addr,
			start: func() error {
				ln, err := net.Listen("tcp", a.Addr)
				if err != nil {
					return fmt.Errorf("admin listener %s: %w", a.Addr, err)
				}
				srv = &http.Server{
					Handler:           metrics.Handler(s.metrics, a.Allow, s.readiness()),
					ReadHeaderTimeout: 10 * time.Second,
					ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
				}
				s.serve("admin "+a.Addr, func() error {
					if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
						return err
					}
					return nil
				})
				s.log.Info("listening", "proto", "admin", "addr", ln.Addr().String())
				return nil
			},
			stop: func(ctx context.Context) error { return srv.Shutdown(ctx) },
		})
	}
	cs = append(cs, component{name: "control socket",
		start: func() error {
			c, err := listenControl(ControlSocket(cfg), s)
			if err != nil {
				// The node serves without it; SIGHUP still reloads.
				s.log.Warn("no control socket: `sluice reload` will not reach this node; use SIGHUP", "err", err)
				return nil
			}
			s.control = c
			return nil
		},
		stop: func(context.Context) error {
			if s.control == nil {
				return nil
			}
			return s.control.Close()
		},
	})
	return cs
}

// registerCoreMetrics registers the spool and queue gauges, read at
// scrape time (no cost on the message path).
func (s *Server) registerCoreMetrics() error {
	cfg := s.cfg
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	counter := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f)
	}
	// The queue gauges share one Stats per scrape: Stats walks the queue's
	// waiting and held records under its lock (about 1 ms per million).
	stats := scrapeStats(s.q.Stats, time.Now)
	engine := scrapeStats(s.sp.EngineWork, time.Now) // one Pebble metrics read for the three counters
	for _, c := range []prometheus.Collector{
		gauge("sluice_spool_size_bytes", "Bytes the spool's directory takes on disk: allocated blocks, preallocated WAL space included (like du).", func() float64 {
			return float64(dirBytes(cfg.Spool.Path))
		}),
		gauge("sluice_spool_full", "1 while the spool refuses new mail (below its min_free reserve, or failed), else 0.", func() float64 {
			if s.sp.Full() {
				return 1
			}
			return 0
		}),
		gauge("sluice_spool_free_bytes", "Bytes free for the spool on its filesystem, as last measured by the spool's free-space check.", func() float64 {
			avail, _ := s.sp.FreeBytes()
			return float64(avail)
		}),
		gauge("sluice_spool_writable", "1 while the spool can record delivery outcomes and events (not read-only, failed or below its write floor), else 0; delivery is held while 0.", func() float64 {
			if s.sp.Writable() {
				return 1
			}
			return 0
		}),
		counter("sluice_spool_flushed_bytes_total", "Bytes the spool's storage engine wrote to tables when flushing memtables, since start.", func() float64 {
			return float64(engine().FlushedBytes)
		}),
		counter("sluice_spool_compacted_bytes_total", "Bytes the spool's storage engine wrote in compactions, since start: with the flushed bytes, the spool's background writing.", func() float64 {
			return float64(engine().CompactedBytes)
		}),
		counter("sluice_spool_compaction_seconds_total", "Wall time the spool's storage engine spent in compactions, since start.", func() float64 {
			return engine().CompactionTime.Seconds()
		}),
		gauge("sluice_queue_messages", "Messages with at least one recipient still queued.", func() float64 { return float64(stats().Messages) }),
		gauge("sluice_queue_ready_recipients", "Recipients due for a delivery attempt now.", func() float64 { return float64(stats().ReadyRecipients) }),
		gauge("sluice_queue_waiting_recipients", "Recipients waiting for their next attempt (deferred).", func() float64 { return float64(stats().WaitingRecipients) }),
		gauge("sluice_queue_held_recipients", "Recipients held by an operator (no attempt until released).", func() float64 { return float64(stats().Held) }),
		gauge("sluice_queue_oldest_ready_seconds", "Age of the oldest message with a recipient due for delivery now (0: none).", func() float64 {
			r, _ := s.q.Oldest(time.Now())
			return r.Seconds()
		}),
		gauge("sluice_queue_oldest_waiting_seconds", "Age of the oldest message with a recipient waiting for a retry (0: none).", func() float64 {
			_, w := s.q.Oldest(time.Now())
			return w.Seconds()
		}),
		gauge("sluice_delivery_active_workers", "Delivery workers busy now, all destinations.", func() float64 { return float64(stats().Active) }),
	} {
		if err := s.metrics.Register(c); err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
	}
	return nil
}

// scrapeStats returns get, memoised for scrapeStatsFor: the metrics of
// one scrape, read one after the other, share one call. Safe for
// concurrent use.
func scrapeStats[T any](get func() T, clock func() time.Time) func() T {
	var (
		mu   sync.Mutex
		at   time.Time
		last T
	)
	return func() T {
		mu.Lock()
		defer mu.Unlock()
		if now := clock(); at.IsZero() || now.Sub(at) > scrapeStatsFor {
			last, at = get(), now
		}
		return last
	}
}

// scrapeStatsFor is how long scrapeStats reuses a reading: well within one
// scrape, well below any scrape interval.
const scrapeStatsFor = 200 * time.Millisecond

// dirBytes is what the files directly in dir take on disk (allocated
// blocks, like du; a file's size where the platform does not say). It
// reads the directory at each call: for a metric scraped every few
// seconds, not for a hot path.
func dirBytes(dir string) uint64 {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var n uint64
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil || fi.IsDir() {
			continue
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			n += uint64(st.Blocks) * 512
		} else {
			n += uint64(fi.Size())
		}
	}
	return n
}

// readiness is what /readyz checks: the spool can take mail (its
// directory takes a new file, its filesystem is above the reserve, the
// storage engine has not failed), the Kafka sink is within its backlog
// budget, no plugin is crash-looping.
func (s *Server) readiness() map[string]metrics.Check {
	return map[string]metrics.Check{
		"spool": func() error {
			if err := probeSpoolDir(s.cfg.Spool.Path); err != nil {
				return err
			}
			if err := s.sp.CheckSpace(); err != nil {
				return fmt.Errorf("the spool refuses new mail: %w", err)
			}
			if s.sp.Full() {
				return errors.New("the spool refuses new mail (below its min_free reserve, or failed; see the log)")
			}
			return nil
		},
		"events": func() error {
			if err := s.backlog.Load().Check(); err != nil {
				return fmt.Errorf("new mail is refused: the Kafka sink's backlog is over kafka.max_backlog (on_backlog_full = \"tempfail\"): %w", err)
			}
			return nil
		},
		"plugins": func() error {
			if err := s.plugins.Check(); err != nil {
				return fmt.Errorf("mail through these stages follows their on_error policy: %w", err)
			}
			return nil
		},
	}
}

// Metrics is the node's registry, for tests and embedding.
func (s *Server) Metrics() *prometheus.Registry { return s.metrics }

func (s *Server) serve(name string, fn func() error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := fn(); err != nil && !errors.Is(err, smtpsrc.ErrServerClosed) {
			s.errc <- fmt.Errorf("%s: %w", name, err)
		}
	}()
}

// Errors reports fatal listener errors.
func (s *Server) Errors() <-chan error { return s.errc }

// Relay returns the transaction owner (tests, tools).
func (s *Server) Relay() *relay.Relay { return s.relay }

// minFree maps the configured reserve (0: disabled) to spool.Options
// (0: default, negative: disabled).
func minFree(n int64) int64 {
	if n == 0 {
		return -1
	}
	return n
}

// Housekeeping: every 10 s the spool compacts the key ranges of delivered
// messages when enough were deleted (space comes back while running);
// every hour, history and idempotency records are pruned.
func (s *Server) housekeeping(ctx context.Context) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	rt := time.NewTicker(10 * time.Second)
	defer rt.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-rt.C:
			if _, err := s.sp.Reclaim(ctx, false); err != nil && ctx.Err() == nil {
				s.log.Warn("spool compaction failed", "err", err)
			}
		case <-t.C:
			now := time.Now()
			if err := s.sp.PruneHistory(now.Add(-s.cfg.HistoryRetention())); err != nil {
				s.log.Warn("pruning message history failed", "err", err)
			}
			if n, err := s.sp.PruneIdempotency(now); err != nil {
				s.log.Warn("pruning idempotency records failed", "err", err)
			} else if n > 0 {
				s.log.Debug("pruned idempotency records", "n", n)
			}
		}
	}
}

// Stop stops the components in reverse order: listeners first (letting
// sessions finish until ctx ends), then the relay, the queue, the
// exporter and the spool; then it closes the pipeline.
func (s *Server) Stop(ctx context.Context) error {
	err := s.stopStarted(ctx)
	s.wg.Wait()
	if s.relay != nil {
		s.relay.ClosePipeline()
	} else if s.pipe != nil {
		relay.ClosePipeline(s.pipe)
	}
	closeRedis(s.redis)
	s.redis = nil
	return err
}

func (s *Server) stopStarted(ctx context.Context) error {
	var first error
	for i := len(s.started) - 1; i >= 0; i-- {
		c := s.started[i]
		if err := c.stop(ctx); err != nil {
			s.log.Warn("stopping "+c.name+" failed", "err", err)
			if first == nil {
				first = err
			}
		}
	}
	s.started = nil
	return first
}

// Reload loads the configuration file again. If it validates, new
// transactions use its pipeline while those in flight finish on the old
// one, which is then closed; if not, the old pipeline keeps serving and
// the error is returned. Settings that need a restart are not applied:
// the summary names them. Reload also reopens the events file (log
// rotation).
func (s *Server) Reload() (summary string, err error) {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	var reopenErr error
	if s.file != nil {
		if reopenErr = s.file.Reopen(); reopenErr != nil {
			s.log.Error("cannot reopen the events file; events still go to the file open before", "path", s.cfg.Events.File, "err", reopenErr)
		}
	}
	cfg, err := config.Load(s.cfg.File)
	if err != nil {
		s.log.Error("reload failed; the running pipeline keeps serving", "err", err)
		return "", err
	}
	if err := checkNode(cfg); err != nil {
		s.log.Error("reload failed; the running pipeline keeps serving", "err", err)
		return "", err
	}
	// sluice.tokens and its key files are read again: a rotated key
	// takes effect without a restart.
	var (
		tokIss *token.Issuer
		tokVer *token.Verifier
	)
	if t := cfg.Tokens; t.Enabled() {
		if tokIss, tokVer, err = token.Load(t.SigningKey, t.PublicKeys, t.MaxLifetime, s.revoker()); err != nil {
			err = fmt.Errorf("sluice.tokens: %w", err)
			s.log.Error("reload failed; the running pipeline keeps serving", "err", err)
			return "", err
		}
	}
	// sluice.tracking's keys and hosts are read again (key rotation);
	// turning tracking on or off needs a restart (RestartNeeded).
	var trackOpts *tracking.Options
	if s.tracker != nil && cfg.Tracking.Enabled() {
		o, err := trackingOptions(cfg.Tracking)
		if err == nil {
			err = tracking.Check(o)
		}
		if err != nil {
			s.log.Error("reload failed; the running pipeline keeps serving", "err", err)
			return "", err
		}
		trackOpts = &o
	}
	p, err := buildPipeline(cfg, s.log, s.res, shared{pool: s.plugins, redis: s.redis, limits: s.limits, metrics: s.registerer(), node: s.node, onStages: s.useDomainKeys, tracker: s.tracker})
	if err != nil {
		s.log.Error("reload failed; the running pipeline keeps serving", "err", err)
		return "", err
	}
	if trackOpts != nil {
		_ = s.tracker.Configure(*trackOpts) // checked above
	}
	s.relay.Swap(p)
	s.tokIss, s.tokVer = tokIss, tokVer
	for _, use := range s.useTokens {
		use(tokIss, tokVer)
	}
	cfg.ApplyLogging(s.log)
	s.sp.SetSuppressionPolicy(suppressionPolicy(cfg))
	if reg := s.domains.Load(); reg != nil {
		reg.SetPolicy(domains.PolicyOf(cfg))
	}
	if cfg.DNSServer != nil && s.rotation.Load() != nil {
		rc := cfg.DKIMRotation
		s.rotation.Store(&rc)
	}
	restart := RestartNeeded(s.cfg, cfg)
	summary = fmt.Sprintf("reloaded %s: %d stage(s)", cfg.File, len(cfg.Stages))
	if len(restart) > 0 {
		summary += "; not applied until a restart: " + strings.Join(restart, ", ")
		s.log.Warn("reload: settings that need a restart changed; they are not applied", "settings", restart)
	}
	if reopenErr != nil {
		summary += "; the events file could not be reopened (events still go to the file open before): " + reopenErr.Error()
	}
	s.log.Info("configuration reloaded", "config", cfg.File, "stages", len(cfg.Stages))
	return summary, nil
}

// onTokens registers a listener's UseTokens for Reload.
func (s *Server) onTokens(use func(*token.Issuer, *token.Verifier)) {
	s.reloadMu.Lock()
	s.useTokens = append(s.useTokens, use)
	s.reloadMu.Unlock()
}

// startWebhooks adds a sink per configured webhook to s.sinks, with the
// shared dead-letter counter and request latency metrics.
func (s *Server) startWebhooks(cfg *config.Config) error {
	if len(cfg.Events.Webhooks) == 0 {
		return nil
	}
	var reg prometheus.Registerer
	if s.metrics != nil {
		reg = s.metrics
	}
	dead := s.deadLetters
	lat, err := events.NewWebhookLatency(reg)
	if err != nil {
		return err
	}
	for _, w := range cfg.Events.Webhooks {
		wh, err := events.NewWebhook(events.WebhookOptions{
			Name: w.Name, URL: w.URL, Secret: w.Secret, Types: w.Types, Tenants: w.Tenants,
			Timeout: w.Timeout, DeadLetterAfter: w.DeadLetterAfter, DeadLetter: w.DeadLetter,
			Concurrency: w.Concurrency, Logger: s.log, DeadLetters: dead, Latency: lat,
		})
		if err != nil {
			return fmt.Errorf("%s: sluice.events: %w", cfg.File, err)
		}
		s.sinks = append(s.sinks, wh)
	}
	return nil
}

// RestartNeeded names the settings that differ between old and new and
// that a reload cannot apply: listeners, the spool, delivery, events, the
// node's names, sluice.redis, sluice.auth (its users file is reread on change anyway). The pipeline (stages, stage_timeout, local_domains,
// lua_options) reloads.
func RestartNeeded(old, new *config.Config) []string {
	var out []string
	for _, c := range []struct {
		name     string
		old, new any
	}{
		{"sluice.listen_smtp", old.SMTP, new.SMTP},
		{"sluice.listen_http", old.HTTP, new.HTTP},
		{"sluice.listen_admin", old.Admin, new.Admin},
		{"sluice.spool", old.Spool, new.Spool},
		{"sluice.delivery", old.Delivery, new.Delivery},
		{"sluice.events", old.Events, new.Events},
		{"sluice.bounces", old.Bounces, new.Bounces},
		{"sluice.auth", old.Auth, new.Auth},
		{"sluice.redis", old.Redis, new.Redis},
		{"sluice.egress", old.Egress, new.Egress},
		{"sluice.dns_server", old.DNSServer, new.DNSServer},
		{"sluice.sandbox", old.Sandbox, new.Sandbox},
		{"sluice.node", [2]string{old.Node, old.Hostname}, [2]string{new.Node, new.Hostname}},
	} {
		if !reflect.DeepEqual(c.old, c.new) {
			out = append(out, c.name)
		}
	}
	if !old.Shaping.Same(new.Shaping) {
		out = append(out, "sluice.shaping")
	}
	if old.Tracking.Enabled() != new.Tracking.Enabled() {
		out = append(out, "sluice.tracking (turned on or off)")
	}
	return out
}

// EnsureDirs creates the parent directories of the spool and events file.
func EnsureDirs(cfg *config.Config) error {
	for _, d := range []string{cfg.Spool.Path, filepath.Dir(cfg.Events.File)} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return err
		}
	}
	return nil
}

// suppressionPolicy is sluice.suppression as the spool takes it.
func suppressionPolicy(cfg *config.Config) spool.SuppressionPolicy {
	return spool.SuppressionPolicy{Enabled: cfg.Suppression.Enabled, Classes: cfg.Suppression.Classes}
}

// configDir is the directory relative paths in stage options start from.
func configDir(cfg *config.Config) string {
	if cfg.File == "" {
		return ""
	}
	return filepath.Dir(cfg.File)
}

// stageTimer is node's pipeline.ChainOptions.StageTimer (nil without
// metrics: a nil func value, not a nil method value).
func stageTimer(node *metrics.Node) func(stage, hook string) func(time.Duration, bool) {
	if node == nil {
		return nil
	}
	return node.StageTimer
}

// registerer is the node's registry for stages, nil when there is none
// (a nil *prometheus.Registry must not become a non-nil interface).
func (s *Server) registerer() prometheus.Registerer {
	if s.metrics == nil {
		return nil
	}
	return s.metrics
}
