package testutil

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Cert is a self-signed certificate made by SelfSignedCert, in the forms
// the code under test and the test's client want it.
type Cert struct {
	// CertFile and KeyFile are PEM files (CERTIFICATE and EC PRIVATE KEY)
	// in a temporary directory removed when the test ends: what a
	// configuration's tls { cert, key } block points at.
	CertFile, KeyFile string
	// TLS is a server configuration presenting the certificate.
	TLS *tls.Config
	// Pool trusts the certificate (and nothing else): a client's RootCAs.
	Pool *x509.CertPool
	// Leaf is the parsed certificate.
	Leaf *x509.Certificate
}

// ClientTLS returns a client configuration that trusts only c and expects
// serverName.
func (c *Cert) ClientTLS(serverName string) *tls.Config {
	return &tls.Config{RootCAs: c.Pool, ServerName: serverName}
}

// SelfSignedCert makes an ECDSA P-256 certificate valid from an hour ago
// for an hour, for hosts: each is a DNS name or an IP address, and the first
// is also the subject's common name (without hosts it is for "localhost"
// and 127.0.0.1). The certificate signs itself and is flagged as a CA, so
// Pool verifies it as a root. It fails the test on any error.
func SelfSignedCert(t testing.TB, hosts ...string) *Cert {
	t.Helper()
	if len(hosts) == 0 {
		hosts = []string{"localhost", "127.0.0.1"}
	}
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          serialNumber(t),
		Subject:               pkix.Name{CommonName: hosts[0]},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	addHosts(tmpl, hosts)
	der, leaf := sign(t, tmpl, tmpl, key, key)
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	c := &Cert{
		CertFile: filepath.Join(dir, "cert.pem"),
		KeyFile:  filepath.Join(dir, "key.pem"),
		TLS:      &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}}},
		Pool:     x509.NewCertPool(),
		Leaf:     leaf,
	}
	c.Pool.AddCert(leaf)
	if err := os.WriteFile(c.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}
