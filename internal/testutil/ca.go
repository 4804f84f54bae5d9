package testutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"
)

// CA is a test certificate authority: a self-signed root that issues
// server certificates (Issue), for tests of chain validation (DANE-TA,
// verify). Its Cert.Pool trusts the root.
type CA struct {
	*Cert
	key *ecdsa.PrivateKey
}

// NewCA makes a root certificate named name, valid from an hour ago for
// an hour.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          serialNumber(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	_, leaf := sign(t, tmpl, tmpl, key, key)
	c := &Cert{Leaf: leaf, Pool: x509.NewCertPool()}
	c.Pool.AddCert(leaf)
	return &CA{Cert: c, key: key}
}

// Issue makes a server certificate for hosts (DNS names or IP
// addresses; the first is the common name) signed by ca. Its TLS
// configuration presents the chain leaf, root; Leaf is the server
// certificate. CertFile and KeyFile are not written.
func (ca *CA) Issue(t testing.TB, hosts ...string) *Cert {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: serialNumber(t),
		Subject:      pkix.Name{CommonName: hosts[0]},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	addHosts(tmpl, hosts)
	der, leaf := sign(t, tmpl, ca.Leaf, ca.key, key)
	return &Cert{
		TLS: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der, ca.Leaf.Raw},
			PrivateKey: key, Leaf: leaf}}},
		Pool: ca.Pool,
		Leaf: leaf,
	}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// addHosts puts hosts (DNS names or IP addresses) in tmpl's subject
// alternative names.
func addHosts(tmpl *x509.Certificate, hosts []string) {
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
}

// sign makes the certificate of tmpl for key, signed by parent's
// parentKey, and parses it.
func sign(t testing.TB, tmpl, parent *x509.Certificate, parentKey, key *ecdsa.PrivateKey) ([]byte, *x509.Certificate) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return der, leaf
}

func serialNumber(t testing.TB) *big.Int {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	return serial
}
