package main

import (
	"fmt"
	"net/smtp"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/sluice-mta/sluice/pipeline"
)

const reloadConfig = `
local sluice = require("sluice")
sluice.node { name = "reload-1", hostname = "relay.reload.test" }
sluice.spool { path = "{{SPOOL}}" }
sluice.events { file = "{{EVENTS}}" }
sluice.listen_smtp { addr = "{{SMTP}}", relay_networks = { "127.0.0.1/32" } }
sluice.delivery { idle_timeout = "1s" }
sluice.stage("version", {
  on_message = function(msg)
    msg:set_header("X-Pipeline-Version", "{{VERSION}}")
  end,
  on_route = function(msg, rcpt)
    return sluice.route.relay { host = "127.0.0.1", port = {{SMARTPORT}}, tls = "none" }
  end,
})
`

// TestReloadUnderLoad: 20 SMTP sessions send without pause while the
// configuration is reloaded with `sluice reload`. No session fails, no
// acknowledged message is lost, and messages begun after the reload
// carry the new stage's header. A broken configuration is refused by
// `sluice reload` (exit 1, the error), and the running pipeline keeps
// serving. After the events file is moved away, SIGHUP makes new events
// go to a new file at the configured path.
func TestReloadUnderLoad(t *testing.T) {
	smart := newSink(t)
	dir := t.TempDir()
	write := func(r *relayProc, version string) {
		body := strings.NewReplacer("{{SMARTPORT}}", smart.port(), "{{VERSION}}", version).Replace(reloadConfig)
		body = strings.NewReplacer("{{SMTP}}", r.smtp, "{{SPOOL}}", dir+"/spool", "{{EVENTS}}", r.events).Replace(body)
		if err := os.WriteFile(r.cfg, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r := newRelay(t, dir, "")
	write(r, "1")
	r.start()

	const sessions = 20
	type sent struct {
		subject string
		after   bool // begun after the reload returned
	}
	var (
		mu       sync.Mutex
		acked    []sent
		failures []error
		reloaded atomic.Bool
		stop     atomic.Bool
		perSess  [sessions]atomic.Int64
		wg       sync.WaitGroup
	)
	for i := 0; i < sessions; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, err := smtp.Dial(r.smtp)
			if err != nil {
				mu.Lock()
				failures = append(failures, err)
				mu.Unlock()
				return
			}
			defer c.Close()
			if err := c.Hello("client.test"); err != nil {
				mu.Lock()
				failures = append(failures, err)
				mu.Unlock()
				return
			}
			for n := 0; !stop.Load() && n < 2000; n++ {
				after := reloaded.Load()
				subj := fmt.Sprintf("s%d-m%d", i, n)
				if err := sendOn(c, "app@sender.test", "bob@smart.test", msgData("app@sender.test", "bob@smart.test", subj)); err != nil {
					mu.Lock()
					failures = append(failures, fmt.Errorf("session %d message %d: %w", i, n, err))
					mu.Unlock()
					return
				}
				mu.Lock()
				acked = append(acked, sent{subj, after})
				mu.Unlock()
				perSess[i].Add(1)
			}
			c.Quit()
		}(i)
	}
	atLeast := func(n int64) func() bool {
		return func() bool {
			for i := range perSess {
				if perSess[i].Load() < n {
					return false
				}
			}
			return true
		}
	}
	waitFor(t, "every session to send 3 messages", atLeast(3))

	// Reload to version 2 while the sessions keep sending.
	write(r, "2")
	out, code := runBin(t, "reload", "-c", r.cfg)
	if code != 0 || !strings.Contains(out, "reloaded") {
		t.Fatalf("sluice reload: exit %d, %q", code, out)
	}
	reloaded.Store(true)
	base := [sessions]int64{}
	for i := range perSess {
		base[i] = perSess[i].Load()
	}
	waitFor(t, "every session to send 3 messages after the reload", func() bool {
		for i := range perSess {
			if perSess[i].Load() < base[i]+3 {
				return false
			}
		}
		return true
	})

	// A broken configuration: refused, with the error; version 2 serves on.
	if err := os.WriteFile(r.cfg, []byte("local sluice = require(\"sluice\")\nsluice.stage(\"x\", { on_rcpt = function( end })\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code = runBin(t, "reload", "-c", r.cfg)
	if code != 0 {
		// `sluice reload` reads the file too (for the socket path): it
		// fails on the same syntax error.
		if code != 1 || !strings.Contains(out, "pipeline.lua:2") {
			t.Fatalf("reload of a broken file: exit %d, %q", code, out)
		}
	} else {
		t.Fatalf("reload of a broken file exited 0: %q", out)
	}
	// Broken where only the node sees it (a script that fails when the
	// pipeline is built): `sluice reload` reaches the node and reports its
	// refusal.
	write(r, "3")
	cfg3, _ := os.ReadFile(r.cfg)
	broken := strings.Replace(string(cfg3), `sluice.stage("version"`, `sluice.stage("bad", sluice.lua("missing-script.lua"))
sluice.stage("version"`, 1)
	if err := os.WriteFile(r.cfg, []byte(broken), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code = runBin(t, "reload", "-c", r.cfg)
	if code != 1 || !strings.Contains(out, "missing-script.lua") {
		t.Fatalf("reload of a pipeline that cannot build: exit %d, %q", code, out)
	}
	for i := range perSess {
		base[i] = perSess[i].Load()
	}
	waitFor(t, "more messages after the refused reload", func() bool {
		for i := range perSess {
			if perSess[i].Load() < base[i]+2 {
				return false
			}
		}
		return true
	})
	stop.Store(true)
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d session failures, first: %v", len(failures), failures[0])
	}

	// Every acknowledged message was delivered once; those begun after
	// the reload carry version 2, and none carries version 3.
	mu.Lock()
	all := append([]sent(nil), acked...)
	mu.Unlock()
	waitFor(t, "every acknowledged message at the smarthost", func() bool { return smart.count() >= len(all) })
	got := map[string]string{}
	for _, m := range smart.messages() {
		d := string(m.Data)
		subj := headerValue(d, "Subject")
		if _, dup := got[subj]; dup {
			t.Errorf("message %s delivered twice", subj)
		}
		got[subj] = headerValue(d, "X-Pipeline-Version")
	}
	n2 := 0
	for _, s := range all {
		v, ok := got[s.subject]
		switch {
		case !ok:
			t.Errorf("acknowledged message %s was not delivered", s.subject)
		case v == "3":
			t.Errorf("message %s ran on the refused pipeline", s.subject)
		case s.after && v != "2":
			t.Errorf("message %s begun after the reload carries version %q", s.subject, v)
		case s.after:
			n2++
		}
	}
	if n2 < sessions*3 {
		t.Errorf("only %d messages after the reload", n2)
	}
	t.Logf("%d messages acknowledged and delivered, %d after the reload", len(all), n2)

	// SIGHUP after the events file was moved: new events go to a new file.
	moved := r.events + ".1"
	if err := os.Rename(r.events, moved); err != nil {
		t.Fatal(err)
	}
	if err := r.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a new events file", func() bool { _, err := os.Stat(r.events); return err == nil })
	if err := sendMail(r.smtp, "app@sender.test", []string{"bob@smart.test"}, msgData("app@sender.test", "bob@smart.test", "after-hup")); err != nil {
		t.Fatal(err)
	}
	r.waitEvents("the delivery after SIGHUP in the new file", func(evs []pipeline.Event) bool {
		return countType(evs, pipeline.EventDelivered, "bob@smart.test") >= 1
	})
	if r.cmd.ProcessState != nil {
		t.Fatal("the relay exited on SIGHUP")
	}
}

// sendOn sends one message on an open session.
func sendOn(c *smtp.Client, from, to, data string) error {
	if err := c.Mail(from); err != nil {
		return err
	}
	if err := c.Rcpt(to); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write([]byte(data)); err != nil {
		return err
	}
	return w.Close()
}

func headerValue(msg, name string) string {
	for _, line := range strings.Split(msg, "\r\n") {
		if line == "" {
			break
		}
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, name) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
