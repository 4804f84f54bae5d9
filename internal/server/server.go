// Package server assembles one Sluice node from its configuration: the
// stages and the compiled chain, the spool, the delivery queue, the event
// exporter, and the SMTP and HTTP listeners. It owns their lifecycle:
// New builds everything without side effects beyond compiling Lua; Start
// opens the spool, rebuilds the queues and starts the listeners (cleaning
// up what started if one fails); Stop stops them in reverse order.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/sluice-mta/sluice/internal/apikey"
	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/events"
	"github.com/sluice-mta/sluice/internal/httpapi"
	"github.com/sluice-mta/sluice/internal/luahost"
	"github.com/sluice-mta/sluice/internal/queue"
	"github.com/sluice-mta/sluice/internal/relay"
	"github.com/sluice-mta/sluice/internal/smtpsrc"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// Server is one running node.
type Server struct {
	cfg    *config.Config
	log    *slog.Logger
	host   *luahost.Host
	stages []pipeline.Stage
	chain  *pipeline.Chain

	sp     *spool.Spool
	q      *queue.Queue
	relay  *relay.Relay
	ex     *events.Exporter
	sinks  []events.Sink
	exStop context.CancelFunc
	smtp   []*smtpsrc.Server
	http   []*httpapi.Server
	keys   *apikey.Store
	wg     sync.WaitGroup
	errc   chan error
	bgStop context.CancelFunc
}

// New builds the stages and compiles the chain.
func New(cfg *config.Config, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{cfg: cfg, log: log, errc: make(chan error, 16)}
	host, err := luahost.NewHost(cfg, log)
	if err != nil {
		return nil, err
	}
	s.host = host
	stages, err := BuildStages(cfg, host)
	if err != nil {
		host.Close()
		return nil, err
	}
	s.stages = stages
	s.chain, err = pipeline.Compile(stages, pipeline.ChainOptions{
		StageTimeout: cfg.StageTimeout, LocalDomains: cfg.LocalDomains, Logger: log, RecoverPanics: true,
	})
	if err != nil {
		s.closeStages()
		return nil, err
	}
	return s, nil
}

// BuildStages turns stage specs into stages: built-ins from the registry,
// Lua and inline stages from the Lua host.
func BuildStages(cfg *config.Config, host *luahost.Host) ([]pipeline.Stage, error) {
	var out []pipeline.Stage
	for _, spec := range cfg.Stages {
		var (
			st  pipeline.Stage
			err error
		)
		switch spec.Kind {
		case config.StageBuiltin:
			f, ok := pipeline.Lookup(spec.Builtin)
			if !ok {
				err = fmt.Errorf("unknown built-in stage %q", spec.Builtin)
				break
			}
			st, err = f(spec.Name, spec.Options)
		case config.StagePlugin:
			err = fmt.Errorf("plugin stages are not available in this version of sluice")
		default:
			st, err = host.Stage(spec)
		}
		if err != nil {
			for i := len(out) - 1; i >= 0; i-- {
				if c, ok := out[i].(pipeline.Closer); ok {
					c.Close()
				}
			}
			return nil, fmt.Errorf("%s:%d: stage %q: %w", cfg.File, spec.Line, spec.Name, err)
		}
		out = append(out, st)
	}
	return out, nil
}

func (s *Server) closeStages() {
	for i := len(s.stages) - 1; i >= 0; i-- {
		if c, ok := s.stages[i].(pipeline.Closer); ok {
			if err := c.Close(); err != nil {
				s.log.Warn("stage close failed", "stage", s.stages[i].Name(), "err", err)
			}
		}
	}
	if s.host != nil {
		s.host.Close()
	}
}

// Chain returns the compiled pipeline.
func (s *Server) Chain() *pipeline.Chain { return s.chain }

// dialer adapts delivery.Dialer to queue.Dialer.
type dialer struct{ d *delivery.Dialer }

func (d dialer) Dial(ctx context.Context, r *pipeline.Route, domain string) (queue.Conn, error) {
	sess, err := d.d.Dial(ctx, r, domain)
	if err != nil {
		return nil, err
	}
	return sess, nil
}

// Start opens the spool, rebuilds the queues and starts every listener.
func (s *Server) Start() (err error) {
	cfg := s.cfg
	var cleanup []func()
	defer func() {
		if err != nil {
			for i := len(cleanup) - 1; i >= 0; i-- {
				cleanup[i]()
			}
		}
	}()

	if cfg.Events.Kafka != nil {
		return fmt.Errorf("%s: sluice.events { kafka = ... }: the Kafka sink is not available in this version; remove the kafka key (events go to %s)", cfg.File, cfg.Events.File)
	}
	s.sp, err = spool.Open(cfg.Spool.Path, spool.Options{MemtableMB: cfg.Spool.MemtableMB, Logger: s.log, Node: cfg.Node})
	if err != nil {
		return err
	}
	cleanup = append(cleanup, func() { s.sp.Close() })

	res, err := dnsx.New(dnsx.Options{Server: cfg.Delivery.Resolver})
	if err != nil {
		return fmt.Errorf("delivery resolver: %w", err)
	}
	d := delivery.NewDialer(cfg.Delivery, res)
	d.Hostname = cfg.Delivery.Hostname
	if d.Hostname == "" {
		d.Hostname = cfg.Hostname
	}
	d.Logger = s.log
	s.q = queue.New(s.sp, dialer{d}, &bouncer{chain: s.chain, hostname: cfg.Hostname, log: s.log}, queue.Options{
		MaxConnections: cfg.Delivery.MaxConnections, MaxPerDestination: cfg.Delivery.MaxPerDestination,
		MaxMessagesPerConn: cfg.Delivery.MaxMessagesPerConn, IdleTimeout: cfg.Delivery.IdleTimeout,
		RetryInitial: cfg.Delivery.RetryInitial, RetryMax: cfg.Delivery.RetryMax,
		RetryFactor: cfg.Delivery.RetryFactor, RetryJitter: cfg.Delivery.RetryJitter,
		QueueLifetime: cfg.Delivery.QueueLifetime, Logger: s.log,
	})
	if n, err := s.sp.CollectOrphans(); err != nil {
		return fmt.Errorf("spool: %w", err)
	} else if n > 0 {
		s.log.Info("deleted settled messages left by a crash", "n", n)
	}
	n, err := s.q.Load()
	if err != nil {
		return fmt.Errorf("rebuilding queues from the spool: %w", err)
	}
	s.log.Info("spool opened", "path", cfg.Spool.Path, "queued_recipients", n)
	s.q.Start()
	cleanup = append(cleanup, func() { s.q.Stop(context.Background()) })

	fs, err := events.OpenFile(cfg.Events.File)
	if err != nil {
		return err
	}
	s.sinks = []events.Sink{fs}
	cleanup = append(cleanup, func() { fs.Close() })
	var onEvent func(context.Context, *pipeline.Event)
	if s.chain.HasEventHooks() {
		onEvent = s.chain.Event
	}
	s.ex, err = events.NewExporter(s.sp, s.sinks, events.Options{OnEvent: onEvent, Logger: s.log})
	if err != nil {
		return err
	}
	exCtx, exStop := context.WithCancel(context.Background())
	s.exStop = exStop
	go s.ex.Run(exCtx)
	cleanup = append(cleanup, func() { exStop(); <-s.ex.Done() })

	bg, bgStop := context.WithCancel(context.Background())
	s.bgStop = bgStop
	s.wg.Add(1)
	go s.housekeeping(bg)
	cleanup = append(cleanup, bgStop)

	s.relay = relay.New(s.chain, s.sp, s.q, s.log)

	for _, l := range cfg.SMTP {
		// One id generator for every source: the spool's is strictly
		// monotonic, so ids from SMTP, HTTP and bounces sort together.
		srv, err := smtpsrc.New(l, s.chain, smtpSubmitter{s.relay}, s.log, smtpsrc.WithIDGenerator(s.sp.NewID))
		if err != nil {
			return fmt.Errorf("smtp listener %s: %w", l.Addr, err)
		}
		ln, err := net.Listen("tcp", l.Addr)
		if err != nil {
			return fmt.Errorf("smtp listener %s: %w", l.Addr, err)
		}
		s.smtp = append(s.smtp, srv)
		cleanup = append(cleanup, func() { srv.Close() })
		s.serve("smtp "+l.Addr, func() error { return srv.Serve(ln) })
		s.log.Info("listening", "proto", "smtp", "addr", ln.Addr().String(), "tls", l.TLS != nil, "implicit_tls", l.ImplicitTLS)
	}
	if len(cfg.HTTP) > 0 {
		keysPath := cfg.APIKeysFile()
		s.keys, err = apikey.Open(keysPath)
		if err != nil {
			return err
		}
	}
	for _, l := range cfg.HTTP {
		srv, err := httpapi.New(l, s.relay, s.keys, cfg.Hostname, s.log)
		if err != nil {
			return fmt.Errorf("http listener %s: %w", l.Addr, err)
		}
		ln, err := net.Listen("tcp", l.Addr)
		if err != nil {
			return fmt.Errorf("http listener %s: %w", l.Addr, err)
		}
		s.http = append(s.http, srv)
		cleanup = append(cleanup, func() { srv.Shutdown(context.Background()) })
		s.serve("http "+l.Addr, func() error { return srv.Serve(ln) })
		s.log.Info("listening", "proto", "http", "addr", ln.Addr().String(), "tls", l.TLS != nil)
	}
	return nil
}

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

// Relay returns the acceptance path (tests, tools).
func (s *Server) Relay() *relay.Relay { return s.relay }

func (s *Server) housekeeping(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
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

// Stop stops listeners (letting sessions finish until ctx ends), then the
// queue, the exporter, the spool and the stages, in that order.
func (s *Server) Stop(ctx context.Context) error {
	for _, srv := range s.smtp {
		if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, smtpsrc.ErrServerClosed) {
			s.log.Warn("smtp shutdown", "err", err)
		}
	}
	for _, srv := range s.http {
		if err := srv.Shutdown(ctx); err != nil {
			s.log.Warn("http shutdown", "err", err)
		}
	}
	if s.relay != nil {
		// Sessions still running after their grace may still submit:
		// wait (a bounded while longer) so the spool is not closed under
		// a commit.
		wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if !s.relay.Close(wctx) {
			s.log.Warn("submissions still running after shutdown; closing the spool anyway")
		}
		cancel()
	}
	if s.q != nil {
		s.q.Stop(ctx)
	}
	if s.bgStop != nil {
		s.bgStop()
	}
	if s.exStop != nil {
		s.exStop()
		<-s.ex.Done()
	}
	for _, sk := range s.sinks {
		sk.Close()
	}
	s.wg.Wait()
	var err error
	if s.sp != nil {
		err = s.sp.Close()
	}
	s.closeStages()
	return err
}

// smtpSubmitter adapts the relay to the SMTP source's Submitter: on SMTP
// the DATA reply cannot be per recipient, so recipients refused at
// on_route get a DSN.
type smtpSubmitter struct{ r *relay.Relay }

func (a smtpSubmitter) Submit(ctx context.Context, msg *pipeline.Message) (*smtpsrc.Receipt, error) {
	rc, err := a.r.Submit(ctx, msg, relay.Options{BounceRouteRejects: true})
	if err != nil {
		return nil, err
	}
	return &smtpsrc.Receipt{MessageID: rc.MessageID, Queued: rc.Queued, Discarded: rc.Discarded}, nil
}

func (a smtpSubmitter) Rejected(ctx context.Context, txn *pipeline.Txn, rcpt string, err error) {
	a.r.Rejected(ctx, txn, rcpt, err)
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
