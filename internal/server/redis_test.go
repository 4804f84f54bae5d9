package server

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/config"
	tu "github.com/sluice-mta/sluice/internal/testutil"
)

// TestRedisSharedClient: sluice.redis builds one client that reaches a
// real redis-server, with the configured prefix; a malformed address is
// refused at load with the key named.
func TestRedisSharedClient(t *testing.T) {
	rs := tu.StartRedis(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "pipeline.lua")
	src := `sluice.redis { addr = "` + rs.Addr + `", key_prefix = "t1:", timeout = "250ms" }`
	if err := os.WriteFile(file, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRedis(cfg)
	if err != nil || r == nil {
		t.Fatalf("NewRedis: %v %v", r, err)
	}
	defer closeRedis(r)
	if r.Prefix != "t1:" {
		t.Errorf("prefix %q", r.Prefix)
	}
	if err := r.Client.Set(context.Background(), r.Prefix+"k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if got := rs.Do("GET", "t1:k"); got != "$1" {
		t.Errorf("GET t1:k: first reply line %q, want $1 (one byte)", got)
	}
	if err := os.WriteFile(file, []byte(`sluice.redis { addr = "localhost" }`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := config.Load(file); err == nil {
		t.Error("addr without a port was accepted")
	}
}

// TestRedisRateLimitLease: sluice.redis's ratelimit_lease reaches the
// rate-limit store (default 32, 1 to turn leases off), and a value out
// of 1–1000 is refused at load with the key named.
func TestRedisRateLimitLease(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "pipeline.lua")
	for _, c := range []struct {
		opt  string
		want int
		bad  bool
	}{
		{opt: "", want: 32},
		{opt: ", ratelimit_lease = 1", want: 1},
		{opt: ", ratelimit_lease = 1000", want: 1000},
		{opt: ", ratelimit_lease = 0", bad: true},
		{opt: ", ratelimit_lease = 1001", bad: true},
	} {
		if err := os.WriteFile(file, []byte(`sluice.redis { addr = "127.0.0.1:1"`+c.opt+` }`), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(file)
		if c.bad {
			if err == nil || !strings.Contains(err.Error(), "ratelimit_lease") {
				t.Errorf("%q: %v, want an error naming ratelimit_lease", c.opt, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%q: %v", c.opt, err)
		}
		r, err := NewRedis(cfg)
		if err != nil {
			t.Fatal(err)
		}
		closeRedis(r)
		if r.RateLease != c.want {
			t.Errorf("%q: RateLease %d, want %d", c.opt, r.RateLease, c.want)
		}
	}
}
