package smtpsrc

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/relay"
	"github.com/sluice-mta/sluice/internal/token"
	"github.com/sluice-mta/sluice/pipeline"
)

// minCommandLine is the least bound on a command line, CRLF included: RFC
// 5321 section 4.5.3.1.4 allows 512 octets plus what ESMTP parameters add
// (RFC 1869 section 4.1.2, ORCPT, ENVID), whatever max_line_length is.
const minCommandLine = 1000

// ErrServerClosed is returned by Serve and ListenAndServe after Shutdown or
// Close, and by a second Shutdown or Close.
var ErrServerClosed = errors.New("smtpsrc: server closed")

// Server receives mail on one SMTP listener. Construct it with New, run it
// with Serve or ListenAndServe (once), stop it with Shutdown or Close. All
// methods are safe for concurrent use.
type Server struct {
	l         config.SMTPListener
	relay     *relay.Relay
	log       *slog.Logger
	hostname  string
	tlsConfig *tls.Config // nil: no STARTTLS, no implicit TLS
	normalize bool        // BareLineEnding == "normalize"
	spillDir  string      // temporary files of large messages (WithSpillDir)

	smtp *smtp.Server

	baseCtx context.Context // parent of every session's ctx; cancelled by Close
	cancel  context.CancelFunc

	slots     chan struct{} // one per admitted connection (MaxConnections)
	rejecters chan struct{} // bounds the goroutines refusing busy connections
	draining  atomic.Bool   // Shutdown started: no new transactions

	anvil    *anvil      // per-client-address limits
	refusals *refusalLog // connection refusals, logged without a flood
	inflight budget      // message bytes in memory (MaxInflightBytes)
	closing  atomic.Bool // Shutdown or Close called

	// tokens verifies AUTH OAUTHBEARER and XOAUTH2 (auth.go); nil: they
	// are not offered.
	tokens atomic.Pointer[token.Verifier]

	// recoverPanics turns a panic while admitting a connection into a
	// closed connection; tests switch it off to see the panic.
	recoverPanics bool

	mu    sync.Mutex
	ln    *listener
	conns map[*trackedConn]struct{}

	wg sync.WaitGroup // accept loop, admissions, refusals

	// connections and sessions are this listener's children of
	// sluice_smtp_connections_total and sluice_smtp_sessions (nil: the
	// relay has no metrics).
	connections prometheus.Counter
	sessions    prometheus.Gauge
	// protoRefused counts the refusals go-smtp answers itself (nil: no
	// metrics; refusals.go).
	protoRefused *protocolRefusals
}

// Option configures a Server.
type Option func(*Server)

// WithSpillDir sets the directory for the temporary files of messages
// larger than the listener's SpillThreshold (default os.TempDir()). The
// serve command uses the spool's directory: same filesystem, same free
// space reserve. Each file is unlinked as soon as it is created, so none
// is left behind by a crash.
func WithSpillDir(dir string) Option { return func(s *Server) { s.spillDir = dir } }

// WithTLSConfig sets the TLS configuration for STARTTLS or implicit TLS,
// instead of loading l.TLS's files (e.g. for certificate reloading).
func WithTLSConfig(cfg *tls.Config) Option { return func(s *Server) { s.tlsConfig = cfg } }

// New builds a Server for listener l. It validates l, loads the TLS key
// pair when l.TLS is set, and starts nothing. Zero limits in l take the
// defaults of config.DefaultSMTPListener. rl, the transaction owner, is
// required; log nil means slog.Default().
func New(l config.SMTPListener, rl *relay.Relay, log *slog.Logger, opts ...Option) (*Server, error) {
	if rl == nil {
		return nil, errors.New("smtpsrc: New needs a relay")
	}
	if log == nil {
		log = slog.Default()
	}
	l = withDefaults(l)
	s := &Server{
		l:             l,
		relay:         rl,
		recoverPanics: true,
		conns:         make(map[*trackedConn]struct{}),
	}
	for _, o := range opts {
		o(s)
	}
	if s.spillDir == "" {
		s.spillDir = os.TempDir()
	}
	s.log = log.With("component", "smtp", "listener", l.Name)
	if m := rl.Metrics(); m != nil {
		s.connections = m.Connections.WithLabelValues(l.Name)
		s.sessions = m.Sessions.WithLabelValues(l.Name)
	}
	s.protoRefused = newProtocolRefusals(rl.Metrics(), l.Name)

	if err := s.check(); err != nil {
		return nil, err
	}
	s.hostname = l.Hostname
	if s.hostname == "" {
		if h, err := os.Hostname(); err == nil && h != "" {
			s.hostname = h
		} else {
			s.hostname = "localhost"
		}
	}

	srv := smtp.NewServer(backend{s})
	srv.Domain = s.hostname
	srv.MaxMessageBytes = l.MaxMessageSize
	srv.MaxRecipients = l.MaxRecipients
	// go-smtp (our patched copy) applies MaxLineLength to command lines
	// only; message data is checked by Data, after the end of data.
	srv.MaxLineLength = max(l.MaxLineLength, minCommandLine)
	srv.ReadTimeout = l.ReadTimeout
	srv.WriteTimeout = l.WriteTimeout
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true // RFC 3461: NOTIFY, ORCPT, RET, ENVID travel with the message
	// RFC 8689: offered on TLS sessions only; the MAIL parameter in
	// clear text is refused (530 5.7.10) by our go-smtp copy.
	srv.EnableREQUIRETLS = !l.DisableRequireTLS
	srv.TLSConfig = s.tlsConfig // go-smtp offers STARTTLS only on clear-text connections
	// AUTH's TLS rule (TLS, loopback, or auth_insecure) is applied by the
	// session (auth.go), which answers 538 where go-smtp would say 523.
	srv.AllowInsecureAuth = true
	srv.ErrorLog = errorLog{s.log}
	srv.OnRefusal = s.protocolRefusal
	s.smtp = srv

	s.baseCtx, s.cancel = context.WithCancel(context.Background())
	s.slots = make(chan struct{}, l.MaxConnections)
	s.rejecters = make(chan struct{}, maxRejecters)
	s.anvil = newAnvil(l.MaxConnectionsPerIP, l.MaxConnectionRatePerIP, l.ConnectionRateWindow)
	s.refusals = newRefusalLog(s.log, map[string]string{
		reasonBusy:   strconv.Itoa(l.MaxConnections),
		reasonPerIP:  strconv.Itoa(l.MaxConnectionsPerIP),
		reasonRateIP: fmt.Sprintf("%d per %s", l.MaxConnectionRatePerIP, l.ConnectionRateWindow),
		reasonBudget: strconv.FormatInt(l.MaxInflightBytes, 10) + " bytes",
	})
	s.inflight.limit = l.MaxInflightBytes
	return s, nil
}

// CheckListener reports what New would refuse in l (bad settings, TLS
// files that cannot be loaded), without building anything: `sluice
// check`, serve and reload validate with it before opening the spool.
func CheckListener(l config.SMTPListener) error {
	s := &Server{l: withDefaults(l), log: slog.New(slog.DiscardHandler)}
	return s.check()
}

// check validates s.l and loads its TLS key pair into s.tlsConfig.
func (s *Server) check() error {
	l := s.l
	switch l.BareLineEnding {
	case BareReject:
	case BareNormalize:
		s.normalize = true
	default:
		return fmt.Errorf("smtp listener %s: bare_line_ending %q: want %q or %q", l.Name, l.BareLineEnding, BareReject, BareNormalize)
	}
	switch l.Auth {
	case "", "none", "optional", "required":
	default:
		return fmt.Errorf("smtp listener %s: auth = %q: want \"none\", \"optional\" or \"required\"", l.Name, l.Auth)
	}
	if s.tlsConfig == nil && l.TLS != nil {
		cert, err := tls.LoadX509KeyPair(l.TLS.Cert, l.TLS.Key)
		if err != nil {
			return fmt.Errorf("smtp listener %s: tls: %w", l.Name, err)
		}
		s.tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if l.ImplicitTLS && s.tlsConfig == nil {
		return fmt.Errorf("smtp listener %s: implicit TLS needs tls = { cert = ..., key = ... }", l.Name)
	}
	return nil
}

// withDefaults fills zero limits from config.DefaultSMTPListener.
func withDefaults(l config.SMTPListener) config.SMTPListener {
	d := config.DefaultSMTPListener(l.Addr)
	if l.Name == "" {
		l.Name = l.Addr
	}
	if l.MaxMessageSize <= 0 {
		l.MaxMessageSize = d.MaxMessageSize
	}
	if l.MaxRecipients <= 0 {
		l.MaxRecipients = d.MaxRecipients
	}
	if l.MaxLineLength <= 0 {
		l.MaxLineLength = d.MaxLineLength
	}
	if l.MaxConnections <= 0 {
		l.MaxConnections = d.MaxConnections
	}
	if l.ReadTimeout <= 0 {
		l.ReadTimeout = d.ReadTimeout
	}
	if l.WriteTimeout <= 0 {
		l.WriteTimeout = d.WriteTimeout
	}
	if l.DataTimeout <= 0 {
		l.DataTimeout = d.DataTimeout
	}
	if l.MaxHops <= 0 {
		l.MaxHops = d.MaxHops
	}
	if l.BareLineEnding == "" {
		l.BareLineEnding = d.BareLineEnding
	}
	if l.MaxConnectionsPerIP <= 0 {
		l.MaxConnectionsPerIP = d.MaxConnectionsPerIP
	}
	if l.MaxConnectionRatePerIP <= 0 || l.ConnectionRateWindow <= 0 {
		l.MaxConnectionRatePerIP, l.ConnectionRateWindow = d.MaxConnectionRatePerIP, d.ConnectionRateWindow
	}
	if l.MaxSessionTime <= 0 {
		l.MaxSessionTime = d.MaxSessionTime
	}
	if l.MaxInflightBytes <= 0 {
		l.MaxInflightBytes = d.MaxInflightBytes
	}
	if l.SpillThreshold <= 0 {
		l.SpillThreshold = d.SpillThreshold
	}
	return l
}

// ListenAndServe listens on l.Addr (TCP) and serves. See Serve.
func (s *Server) ListenAndServe() error {
	if s.closing.Load() {
		return ErrServerClosed
	}
	ln, err := net.Listen("tcp", s.l.Addr)
	if err != nil {
		return fmt.Errorf("smtp listener %s: %w", s.l.Name, err)
	}
	return s.Serve(ln)
}

// Serve accepts connections on ln until Shutdown or Close, which make it
// return ErrServerClosed; any other return is a listener failure. For an
// implicit TLS listener, pass the plain TCP listener: Serve does the TLS.
// Serve may be called once per Server; it takes ownership of ln.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	if s.ln != nil {
		s.mu.Unlock()
		return errors.New("smtpsrc: Serve called twice")
	}
	wl := newListener(s, ln)
	s.ln = wl
	s.wg.Add(1)
	s.mu.Unlock()

	s.log.Info("smtp listener started", "addr", ln.Addr().String(), "hostname", s.hostname,
		"starttls", s.tlsConfig != nil && !s.l.ImplicitTLS, "implicit_tls", s.l.ImplicitTLS)
	go wl.loop()
	err := s.smtp.Serve(wl)
	if s.closing.Load() {
		return ErrServerClosed
	}
	if err == nil {
		err = ErrServerClosed
	}
	return err
}

// Addr returns the address the server listens on, or nil before Serve.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Shutdown stops accepting connections, refuses new transactions, closes
// connections that are idle between transactions (go-smtp answers them
// "421 4.4.2"), and waits for transactions in progress to finish. If ctx
// ends first, it cancels every session's context (aborting stage calls and
// Submit), closes all connections and returns ctx.Err().
func (s *Server) Shutdown(ctx context.Context) error {
	if !s.beginClose() {
		return ErrServerClosed
	}
	s.draining.Store(true)
	s.mu.Lock()
	for c := range s.conns {
		c.kickIfIdle()
	}
	s.mu.Unlock()

	// go-smtp closes the listener and waits for its connection handlers.
	err := s.smtp.Shutdown(ctx)
	if err == nil {
		err = waitCtx(ctx, &s.wg)
	}
	if err != nil {
		s.cancel()
		s.closeAll()
		s.refusals.close()
		return err
	}
	s.cancel()
	s.refusals.close()
	return nil
}

// Close closes the listener and every connection at once, and cancels
// every session's context.
func (s *Server) Close() error {
	if !s.beginClose() {
		return ErrServerClosed
	}
	s.draining.Store(true)
	s.cancel()
	err := s.smtp.Close()
	s.closeAll()
	s.refusals.close()
	return err
}

// beginClose marks the server closing and closes its listener; it reports
// false when that already happened.
func (s *Server) beginClose() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closing.CompareAndSwap(false, true) {
		return false
	}
	if s.ln != nil {
		s.ln.Close()
	}
	return true
}

func (s *Server) closeAll() {
	s.mu.Lock()
	conns := make([]*trackedConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

func waitCtx(ctx context.Context, wg *sync.WaitGroup) error {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// track registers an admitted raw connection; its slot is already taken.
func (s *Server) track(c net.Conn) *trackedConn {
	ap := remoteAddrPort(c)
	ip := ap.Addr()
	relayNet := s.inRelayNetworks(ip)
	tc := &trackedConn{Conn: c, s: s, pc: &pipeline.Conn{
		Source:       pipeline.SourceSMTP,
		Listener:     s.l.Name,
		ServerName:   s.hostname,
		RemoteIP:     ip,
		RemotePort:   ap.Port(),
		RelayNetwork: relayNet,
	}}
	tc.rs = s.relay.NewSession(tc.pc)
	tc.sessionDeadline = time.Now().Add(s.l.MaxSessionTime)
	s.mu.Lock()
	s.conns[tc] = struct{}{}
	s.mu.Unlock()
	if s.connections != nil {
		s.connections.Inc()
		s.sessions.Inc()
	}
	if s.draining.Load() {
		tc.kickIfIdle()
	}
	return tc
}

// untrack forgets a closed connection and frees its slot.
func (s *Server) untrack(c *trackedConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	if s.sessions != nil {
		s.sessions.Dec()
	}
	if !c.pc.RelayNetwork {
		s.anvil.release(c.pc.RemoteIP)
	}
	<-s.slots
}

// inRelayNetworks reports whether ip is in the listener's relay_networks,
// which are also exempt from the per-client-address limits (as Postfix's
// smtpd_client_event_limit_exceptions = $mynetworks).
func (s *Server) inRelayNetworks(ip netip.Addr) bool {
	for _, p := range s.l.RelayNetworks {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func (s *Server) handshakeTimeout() time.Duration {
	if d := s.l.ReadTimeout; d > 0 && d < time.Minute {
		return d
	}
	return time.Minute
}

// errorLog adapts go-smtp's internal error log to slog: panics at error
// level, the rest (client I/O failures) at debug.
type errorLog struct{ log *slog.Logger }

func (e errorLog) Printf(format string, v ...any) { e.emit(fmt.Sprintf(format, v...)) }
func (e errorLog) Println(v ...any)               { e.emit(strings.TrimSuffix(fmt.Sprintln(v...), "\n")) }

func (e errorLog) emit(m string) {
	if strings.Contains(m, "panic") {
		e.log.Error("smtp server: " + m)
		return
	}
	e.log.Debug("smtp server: " + m)
}
