package server

import (
	"context"
	"os"
	"path/filepath"
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
