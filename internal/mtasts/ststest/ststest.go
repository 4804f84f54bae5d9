// Package ststest serves MTA-STS policies over HTTPS on loopback for
// tests: a real TLS server with a test certificate for mta-sts.DOMAIN,
// and the pool and dial override an mtasts.Cache needs to reach it.
package ststest

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/sluice-mta/sluice/internal/testutil"
)

// Server serves one policy body at /.well-known/mta-sts.txt.
type Server struct {
	HTTP *httptest.Server
	// Cert is the server's certificate (for the names StartServer got);
	// Cert.Pool is what mtasts.Cache.RootCAs should be.
	Cert *testutil.Cert
	hits atomic.Int64

	mu     sync.Mutex
	body   string
	status int
}

// StartServer serves body with a certificate for names (say
// "mta-sts.example.test") and stops when the test ends.
func StartServer(t testing.TB, body string, names ...string) *Server {
	t.Helper()
	s := &Server{Cert: testutil.SelfSignedCert(t, names...), body: body, status: http.StatusOK}
	s.HTTP = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		s.mu.Lock()
		body, status := s.body, s.status
		s.mu.Unlock()
		if r.URL.Path != "/.well-known/mta-sts.txt" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}))
	s.HTTP.TLS = s.Cert.TLS
	s.HTTP.Config.ErrorLog = log.New(io.Discard, "", 0) // clients that refuse the certificate are expected
	s.HTTP.StartTLS()
	t.Cleanup(s.HTTP.Close)
	return s
}

// Set changes the body and status served from now on.
func (s *Server) Set(body string, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.body, s.status = body, status
}

// Hits is how many requests the server answered.
func (s *Server) Hits() int { return int(s.hits.Load()) }

// Dial connects every address to the server: an mtasts.Cache.DialContext.
func (s *Server) Dial(ctx context.Context, network, _ string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, s.HTTP.Listener.Addr().String())
}
