package config

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"
)

// Redis: sluice.redis { addr = "127.0.0.1:6379", ... }. The node's one
// Redis connection pool, shared by every part that keeps cluster-wide
// state: token revocations (docs/auth.md) and cluster rate limits. Without
// sluice.redis, that state is kept on this node only.
type Redis struct {
	// Addr is host:port of the Redis server. Required.
	Addr string
	// Username and Password authenticate (Redis 6 ACL; Username "" uses
	// the default user). Take Password from sluice.env.
	Username, Password string
	// DB is the logical database number. Default 0.
	DB int
	// TLS, when set, encrypts the connection.
	TLS *ClientTLS
	// DialTimeout bounds connecting. Default 1s.
	DialTimeout time.Duration
	// Timeout bounds each command's read and write. Default 500ms: a
	// Redis slower than that counts as unreachable, and each user of the
	// connection applies its own fail-open or fail-closed rule.
	Timeout time.Duration
	// PoolSize is the maximum number of connections. Default 0: ten per
	// CPU (go-redis's default).
	PoolSize int
	// KeyPrefix starts every key Sluice writes, so that several clusters
	// can share one Redis. Default "sluice:".
	KeyPrefix string
	// RateLimitLease is the most events the Redis rate-limit store charges
	// a key for in one round trip, to spend on this node without one
	// (docs/ratelimit.md, "Leases"). Default 32; 1 turns leasing off;
	// at most 1000.
	RateLimitLease int
}

// sluice.redis { addr = "127.0.0.1:6379", username = "", password = sluice.env("REDIS_PASSWORD"),
// db = 0, tls = {...}, dial_timeout = "1s", timeout = "500ms", pool_size = 0, key_prefix = "sluice:",
// ratelimit_lease = 32 }
func (ld *loader) redis(L *lua.LState) int {
	const fn = "sluice.redis"
	ld.singleton(fn)
	o := ld.s.CheckOpts(1, fn, "addr", "username", "password", "db", "tls", "dial_timeout", "timeout",
		"pool_size", "key_prefix", "ratelimit_lease")
	r := &Redis{DialTimeout: time.Second, Timeout: 500 * time.Millisecond, KeyPrefix: "sluice:", RateLimitLease: 32}
	if !o.String("addr", &r.Addr) {
		o.Fail("addr", "is required (host:port of the Redis server, e.g. \"127.0.0.1:6379\")")
	}
	if _, port, err := net.SplitHostPort(r.Addr); err != nil || port == "" {
		o.Fail("addr", "want host:port, got %q", r.Addr)
	}
	o.String("username", &r.Username)
	o.String("password", &r.Password)
	if o.Int("db", &r.DB) && r.DB < 0 {
		o.Fail("db", "must not be negative")
	}
	r.TLS = ld.clientTLS(o, "tls")
	ld.duration(o, "dial_timeout", &r.DialTimeout)
	ld.duration(o, "timeout", &r.Timeout)
	if o.Int("pool_size", &r.PoolSize) && r.PoolSize < 0 {
		o.Fail("pool_size", "must not be negative (0: ten per CPU)")
	}
	if o.String("key_prefix", &r.KeyPrefix) && strings.ContainsAny(r.KeyPrefix, " \r\n") {
		o.Fail("key_prefix", "must not contain spaces or line breaks")
	}
	if o.Int("ratelimit_lease", &r.RateLimitLease) && (r.RateLimitLease < 1 || r.RateLimitLease > 1000) {
		o.Fail("ratelimit_lease", "must be from 1 (no lease: every event checked in Redis) to 1000")
	}
	ld.cfg.Redis = r
	return 0
}

// Config builds the crypto/tls settings; key names the table in errors
// ("kafka.tls"). CA is a PEM file (empty: the system roots); Cert and
// Key are PEM files, both or neither (a client certificate); ServerName
// empty means the server's host; InsecureSkipVerify is for tests only.
func (c *ClientTLS) Config(key string) (*tls.Config, error) {
	t := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName, InsecureSkipVerify: c.InsecureSkipVerify}
	if c.CA != "" {
		pem, err := os.ReadFile(c.CA)
		if err != nil {
			return nil, fmt.Errorf("%s.ca: %w", key, err)
		}
		t.RootCAs = x509.NewCertPool()
		if !t.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s.ca: %s holds no PEM certificate", key, c.CA)
		}
	}
	if (c.Cert == "") != (c.Key == "") {
		return nil, fmt.Errorf("%s: set both cert and key, or neither", key)
	}
	if c.Cert != "" {
		kp, err := tls.LoadX509KeyPair(c.Cert, c.Key)
		if err != nil {
			return nil, fmt.Errorf("%s.cert/key: %w", key, err)
		}
		t.Certificates = []tls.Certificate{kp}
	}
	return t, nil
}
