package testutil

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Redis is a real redis-server started by a test on a free loopback port,
// with its data directory in the test's temporary directory (append-only
// file on, so Stop then Start keeps the data, as a restarted production
// Redis would). Stopped at the end of the test.
type Redis struct {
	Addr string
	t    testing.TB
	dir  string
	cmd  *exec.Cmd
}

// StartRedis starts redis-server. Without the binary the test is skipped,
// or fails when SLUICE_TEST_REDIS=require (set by .ci/run, and by make
// test after it installed Debian's redis-server), so CI cannot pass by
// skipping.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("SLUICE_TEST_REDIS") == "require" {
			t.Fatal("redis-server is not installed (apt-get install redis-server; make deps does it as root)")
		}
		t.Skip("redis-server is not installed; make test installs it (apt-get install redis-server)")
	}
	r := &Redis{Addr: FreeAddr(t), t: t, dir: t.TempDir()}
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

// Start starts the server (again, after Stop) on the same address and
// data directory, and waits until it answers PING.
func (r *Redis) Start() {
	r.t.Helper()
	_, port, _ := net.SplitHostPort(r.Addr)
	r.cmd = exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1", "--dir", r.dir,
		"--save", "", "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no",
		"--protected-mode", "no", "--loglevel", "warning")
	logf, err := os.OpenFile(filepath.Join(r.dir, "redis.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		r.t.Fatal(err)
	}
	defer logf.Close()
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if r.ping() {
			return
		}
		if time.Now().After(deadline) {
			r.Stop()
			out, _ := os.ReadFile(filepath.Join(r.dir, "redis.log"))
			r.t.Fatalf("redis-server on %s did not answer PING within 10s; its log:\n%s", r.Addr, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills the server (SIGKILL: what a crash or a network partition
// looks like to a client) and waits for it to exit. Stop twice is a no-op.
func (r *Redis) Stop() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	_ = r.cmd.Wait()
	r.cmd = nil
}

// ping speaks RESP directly so that testutil does not depend on a client.
func (r *Redis) ping() bool {
	c, err := net.DialTimeout("tcp", r.Addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "+PONG")
}

// Do sends one command and returns the first line of the reply, for a
// test that looks at what Sluice wrote ("KEYS", "GET"...).
func (r *Redis) Do(args ...string) string {
	r.t.Helper()
	c, err := net.DialTimeout("tcp", r.Addr, time.Second)
	if err != nil {
		r.t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	var b strings.Builder
	b.WriteString("*" + strconv.Itoa(len(args)) + "\r\n")
	for _, a := range args {
		b.WriteString("$" + strconv.Itoa(len(a)) + "\r\n" + a + "\r\n")
	}
	if _, err := c.Write([]byte(b.String())); err != nil {
		r.t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		r.t.Fatal(err)
	}
	return strings.TrimRight(line, "\r\n")
}
