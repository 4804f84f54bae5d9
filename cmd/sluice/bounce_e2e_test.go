package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/pipeline"
)

// TestBounceClassEndToEnd: real replies from a sink and Sluice's own
// decisions end in events with a bounce_class from the classifier (an
// operator's rule file first, then the default rules), and on_event stages
// see it.
func TestBounceClassEndToEnd(t *testing.T) {
	e := newEnv(t, map[string]string{"{{LIFETIME}}": "2s"})
	e.dns.SetNullMX("nullmx.test")
	e.smart.rcptReply = func(rcpt string) error {
		switch {
		case strings.HasPrefix(rcpt, "nobody@"):
			return smtpErr(550, [3]int{5, 1, 1}, "The email account that you tried to reach does not exist.")
		case strings.HasPrefix(rcpt, "full@"):
			return smtpErr(452, [3]int{4, 2, 2}, "The email account that you tried to reach is over quota.")
		case strings.HasPrefix(rcpt, "acme@"):
			return smtpErr(550, [3]int{5, 7, 1}, "ACME Corp does not want your mail")
		}
		return nil
	}
	// The same configuration, plus sluice.bounces with an operator file
	// (KumoMTA format) and a stage that logs what on_event sees.
	pairs := []string{}
	for k, v := range e.vars {
		pairs = append(pairs, k, v)
	}
	cfg := strings.NewReplacer(pairs...).Replace(baseConfig) + `
sluice.bounces { rules = { "bounce.toml" }, default_rules = true }
sluice.stage("watch", {
  on_event = function(ev)
    if ev.bounce_class ~= "" then
      sluice.log.info("classified", { rcpt = ev.recipient, type = ev.type, class = ev.bounce_class })
    end
  end,
})
`
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "bounce.toml"), []byte("[rules]\nCustomerBlock = [\n  \"(?i)acme corp does not want\",\n]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.relay = newRelay(t, dir, cfg)
	e.relay.start()
	rcpts := []string{"nobody@smart.test", "full@smart.test", "acme@smart.test", "ok@smart.test", "x@nullmx.test"}
	if err := sendMail(e.relay.smtp, "app@sender.test", rcpts, msgData("app@sender.test", "nobody@smart.test", "classify")); err != nil {
		t.Fatal(err)
	}
	evs := e.relay.waitEvents("bounces and the expiry", func(evs []pipeline.Event) bool {
		return countType(evs, "bounced", "nobody@smart.test") == 1 && countType(evs, "bounced", "acme@smart.test") == 1 &&
			countType(evs, "bounced", "x@nullmx.test") == 1 && countType(evs, "expired", "full@smart.test") == 1
	})
	want := map[string]string{
		"bounced/nobody@smart.test":  "InvalidRecipient",
		"bounced/acme@smart.test":    "CustomerBlock",
		"bounced/x@nullmx.test":      "BadDomain",
		"deferred/full@smart.test":   "QuotaIssues",
		"expired/full@smart.test":    "QuotaIssues",
		"delivered/ok@smart.test":    "",
		"received/nobody@smart.test": "",
	}
	seen := map[string]bool{}
	for _, ev := range evs {
		k := ev.Type + "/" + ev.Recipient
		w, ok := want[k]
		if !ok {
			continue
		}
		seen[k] = true
		if ev.BounceClass != w {
			t.Errorf("%s: bounce_class %q, want %q (response %+v)", k, ev.BounceClass, w, ev.Response)
		}
	}
	for k := range want {
		if !seen[k] {
			t.Errorf("no %s event:\n%s", k, describeEvents(evs))
		}
	}
	// The on_event stage saw the class.
	waitFor(t, "on_event logging the class", func() bool {
		for _, l := range strings.Split(e.relay.logText(), "\n") {
			if strings.Contains(l, "classified") && strings.Contains(l, "nobody@smart.test") && strings.Contains(l, "InvalidRecipient") {
				return true
			}
		}
		return false
	})
}
