package delivery_test

import (
	"context"
	"crypto/x509"
	"net"
	"testing"

	"github.com/sluice-mta/sluice/internal/mtasts"
	"github.com/sluice-mta/sluice/internal/mtasts/ststest"
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
