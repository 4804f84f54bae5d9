package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/testutil"
)

// nonLoopbackIPv4 returns an IPv4 address of this machine outside
// 127.0.0.0/8, or skips the test when there is none.
func nonLoopbackIPv4(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP.String()
		}
	}
	t.Skip("no non-loopback IPv4 address on this machine")
	return ""
}

// Issue 17: against the real binary, with Python's smtplib, a client that
// reaches an auth = "required" listener from a non-loopback address is
// not offered AUTH before STARTTLS and gets 538 5.7.11 if it tries; MAIL
// gets 530 5.7.0; after STARTTLS AUTH is offered and the user logs in.
func TestSMTPAuthBeforeTLSRemoteE2E(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 not installed")
	}
	ip := nonLoopbackIPv4(t)
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Skipf("cannot listen on %s: %v", ip, err)
	}
	remote := ln.Addr().String()
	ln.Close()

	dir := t.TempDir()
	cert := testutil.SelfSignedCert(t, "mx.test")
	users := hashLine(t, "alice", "alice-password-1", "--tenant", "tenant-a", "--sender", "a.example") + "\n"
	if err := os.WriteFile(filepath.Join(dir, "users"), []byte(users), 0o600); err != nil {
		t.Fatal(err)
	}
	r := newRelay(t, dir, fmt.Sprintf(`
local sluice = require("sluice")
sluice.node { name = "auth-remote", hostname = "mx.test" }
sluice.spool { path = "{{SPOOL}}" }
sluice.events { file = "{{EVENTS}}" }
sluice.auth { users = "users", lockout_after = 1000 }
sluice.listen_smtp { addr = "{{SMTP}}" }
sluice.listen_smtp { name = "submission", addr = %q, auth = "required",
  tls = { cert = %q, key = %q } }
`, remote, cert.CertFile, cert.KeyFile))
	r.start()
	waitFor(t, "the submission listener", func() bool {
		c, err := net.Dial("tcp", remote)
		if err == nil {
			c.Close()
		}
		return err == nil
	})

	host, port, _ := strings.Cut(remote, ":")
	checkScriptSteps(t, "testdata/smtp_auth_tls.py", []string{host, port, "alice", "alice-password-1"}, map[string]string{
		"offered-before-tls": "no",
		"auth-before-tls":    "538 5.7.11 ",
		"mail-before-auth":   "530 5.7.0 ",
		"offered-after-tls":  "yes",
		"auth-after-tls":     "235 2.0.0 ",
		"mail-after-auth":    "250 ",
	})
}

// checkScriptSteps runs a Python script printing one "step reply" line per
// step and checks that each step's reply starts with want[step].
func checkScriptSteps(t *testing.T, script string, args []string, want map[string]string) {
	t.Helper()
	out, err := exec.Command("python3", append([]string{script}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		name, rest, _ := strings.Cut(line, " ")
		got[name] = rest
	}
	for name, w := range want {
		if g, ok := got[name]; !ok || !strings.HasPrefix(g, w) {
			t.Errorf("%s: got %q, want %q...", name, g, w)
		}
	}
	if t.Failed() {
		t.Logf("%s output:\n%s", script, out)
	}
}
