package main

import (
	"bytes"
	"net/smtp"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

// hashLine runs `sluice passwd` as an operator would, with the password
// on standard input.
func hashLine(t *testing.T, user, password string, args ...string) string {
	t.Helper()
	cmd := exec.Command(binPath, append([]string{"passwd", user}, args...)...)
	cmd.Stdin = strings.NewReader(password + "\n")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("sluice passwd: %v\n%s", err, stderr.String())
	}
	return strings.TrimSpace(stdout.String())
}

// Issue 17: SMTP AUTH against the real binary, with Python's smtplib.
// Users of two tenants come from a users file made by `sluice passwd`;
// one more user is known only to a Lua on_auth stage.
func TestSMTPAuthE2E(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 not installed")
	}
	e := newEnv(t, map[string]string{"{{RELAYNETS}}": ""})
	dir := filepath.Dir(e.relay.cfg)
	users := hashLine(t, "alice", "alice-password-1", "--tenant", "tenant-a", "--sender", "tenant-a.example") + "\n" +
		hashLine(t, "bob", "bob-password-22", "--tenant", "tenant-b", "--sender", "tenant-b.example,ops@tenant-c.example") + "\n"
	if err := os.WriteFile(filepath.Join(dir, "users"), []byte(users), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := os.ReadFile(e.relay.cfg)
	if err != nil {
		t.Fatal(err)
	}
	body := strings.Replace(string(cfg), "max_recipients = 5,", `max_recipients = 5, auth = "required",`, 1) + `
sluice.auth { users = "users", lockout_after = 1000 }
sluice.stage("lua-auth", {
  on_auth = function(conn, creds)
    if creds.username == "luke" and creds.password == "from-lua" then
      return sluice.accept { tenant = "lua-tenant", senders = { "lua.example" } }
    end
  end,
})
`
	if err := os.WriteFile(e.relay.cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	e.relay.start()

	host, port, _ := strings.Cut(e.relay.smtp, ":")
	checkScriptSteps(t, "testdata/smtp_auth.py", []string{host, port}, map[string]string{
		"offered":               "250 ",
		"mail-before-auth":      "530 5.7.0 ",
		"good-user":             "235 2.0.0 ",
		"own-domain":            "250 ok",
		"other-tenant-envelope": "550 5.7.1 alice may not send from ceo@tenant-b.example",
		"other-tenant-from":     "550 5.7.1 alice may not send with From: ceo@tenant-b.example",
		"two-from":              "550 5.7.1 the message must have exactly one From header field",
		"bad-password":          "535 5.7.8 ",
		"unknown-user":          "535 5.7.8 ",
		"lua-user":              "235 2.0.0 ",
		"login-mech":            "235 2.0.0 ",
		"bob-own-domain":        "250 ok",
		"fail-1":                "535 5.7.8 ",
		"fail-2":                "535 5.7.8 ",
		"fail-3":                "421 4.7.0 ",
		"after-421":             "0 disconnected",
	})

	// The identity reaches the events: the accepted messages carry their
	// user's tenant; the refusals are recorded under alice's tenant.
	evs := e.relay.waitEvents("received and rejected events", func(evs []pipeline.Event) bool {
		return countType(evs, pipeline.EventReceived, "") >= 2 && countType(evs, pipeline.EventRejected, "") >= 3
	})
	tenants := map[string]int{}
	for _, ev := range evs {
		tenants[ev.Type+"/"+ev.Tenant]++
	}
	if tenants["received/tenant-a"] != 1 || tenants["received/tenant-b"] != 1 || tenants["rejected/tenant-a"] != 3 {
		t.Errorf("events by type/tenant: %v\n%s", tenants, describeEvents(evs))
	}
	// A user added to the file while the node runs can log in within a
	// second or so (the file is polled on use), without a reload.
	line := hashLine(t, "carol", "carol-password-3", "--tenant", "tenant-c", "--sender", "tenant-c.example")
	if err := os.WriteFile(filepath.Join(dir, "users"), []byte(users+line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "carol can log in", func() bool {
		c, err := smtp.Dial(e.relay.smtp)
		if err != nil {
			return false
		}
		defer c.Close()
		// net/smtp sends PLAIN in clear text to 127.0.0.1 only. Each
		// failure counts towards the address's lockout: poll slowly.
		if c.Auth(smtp.PlainAuth("", "carol", "carol-password-3", "127.0.0.1")) != nil {
			time.Sleep(200 * time.Millisecond)
			return false
		}
		return true
	})

	logs := e.relay.logText()
	if !strings.Contains(logs, "authentication failed") || !(strings.Contains(logs, "remote_ip=127.0.0.1") || strings.Contains(logs, `"remote_ip":"127.0.0.1"`)) {
		t.Errorf("failed AUTH not logged with the client address:\n%s", logs)
	}
}
