package delivery_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"

	"github.com/sluice-mta/sluice/internal/mtasts"
	"github.com/sluice-mta/sluice/internal/mtasts/ststest"
	"github.com/sluice-mta/sluice/internal/testutil"
)

// stsPolicy is an MTA-STS policy body with one mx pattern.
func stsPolicy(mode, mx string) string {
	return "version: STSv1\nmode: " + mode + "\nmx: " + mx + "\nmax_age: 86400\n"
}

// serveSTS serves each domain's policy body over HTTPS on loopback
// (servers by host name, mta-sts.DOMAIN), publishes its _mta-sts TXT
// record (id 1), trusts its certificate in roots and points e.D.MTASTS
// at the servers.
func serveSTS(t *testing.T, e *env, roots *x509.CertPool, bodies map[string]string) map[string]*ststest.Server {
	t.Helper()
	servers := map[string]*ststest.Server{}
	for domain, body := range bodies {
		servers["mta-sts."+domain] = ststest.StartServer(t, body, "mta-sts."+domain)
		roots.AddCert(servers["mta-sts."+domain].Cert.Leaf)
		e.DNS.AddTXT("_mta-sts."+domain, "v=STSv1; id=1")
	}
	e.D.MTASTS = &mtasts.Cache{Resolver: e.D.Resolver, RootCAs: roots,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, _ := net.SplitHostPort(addr)
			return servers[host].Dial(ctx, network, addr)
		}}
	return servers
}

// addMX gives each domain one MX host, mx.DOMAIN, at its address.
func addMX(e *env, ips map[string]string) {
	for domain, ip := range ips {
		e.DNS.AddMX(domain, 10, "mx."+domain)
		e.DNS.AddA("mx."+domain, ip)
	}
}

// stsSinks are three sinks on one port and an env whose Dialer trusts
// their certificates: good (127.0.0.2) has a certificate for the names
// newSTSSinks got, wrong (127.0.0.3) one for other.test, plain
// (127.0.0.4) offers no STARTTLS. roots is the Dialer's pool (serveSTS
// adds the policy servers' certificates to it).
type stsSinks struct {
	e                  *env
	roots              *x509.CertPool
	good, wrong, plain *testutil.Sink
}

func newSTSSinks(t *testing.T, goodNames ...string) *stsSinks {
	t.Helper()
	good := testutil.SelfSignedCert(t, goodNames...)
	wrong := testutil.SelfSignedCert(t, "other.test")
	s := &stsSinks{roots: x509.NewCertPool()}
	s.good = newSink(t, testutil.SinkOptions{IP: "127.0.0.2", TLS: good.TLS})
	s.wrong = newSink(t, testutil.SinkOptions{IP: "127.0.0.3", Port: s.good.Port, TLS: wrong.TLS})
	s.plain = newSink(t, testutil.SinkOptions{IP: "127.0.0.4", Port: s.good.Port})
	s.e = newEnv(t, s.good.Port)
	s.roots.AddCert(good.Leaf)
	s.roots.AddCert(wrong.Leaf)
	s.e.D.TLSConfig = &tls.Config{RootCAs: s.roots}
	return s
}
