package delivery_test

import (
	"context"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/pipeline"
)

// TestMTASTS delivers to sinks with and without valid certificates under
// MTA-STS policies served over HTTPS on loopback.
func TestMTASTS(t *testing.T) {
	ss := newSTSSinks(t, "mx.good.test", "mx.stale.test")
	e, roots, goodSink, wrongSink, plainSink := ss.e, ss.roots, ss.good, ss.wrong, ss.plain

	policy := stsPolicy
	servers := serveSTS(t, e, roots, map[string]string{
		"good.test":    policy("enforce", "mx.good.test"),
		"wrong.test":   policy("enforce", "*.wrong.test"),
		"plain.test":   policy("enforce", "mx.plain.test"),
		"nomatch.test": policy("enforce", "mx.elsewhere.test"),
		"testing.test": policy("testing", "mx.testing.test"),
		"stale.test":   policy("enforce", "mx.stale.test"),
	})
	addMX(e, map[string]string{"good.test": "127.0.0.2", "wrong.test": "127.0.0.3",
		"plain.test": "127.0.0.4", "nomatch.test": "127.0.0.2", "testing.test": "127.0.0.3", "stale.test": "127.0.0.3"})
	ctx := context.Background()
	send := func(t *testing.T, domain string) pipeline.Remote {
		t.Helper()
		s := dial(t, e, pipeline.MX(), domain)
		per, err := s.Send(ctx, "a@sender.test", []string{"b@" + domain}, message(300))
		if err != nil || per[0] != nil {
			t.Fatalf("Send = %v, %v", per, err)
		}
		return s.Remote()
	}
	deferred := func(t *testing.T, domain, enh, reason, result string) {
		t.Helper()
		_, err := e.D.Dial(ctx, pipeline.MX(), domain)
		pe := wantPE(t, err, 451, enh)
		if !strings.Contains(pe.Message, "MTA-STS (enforce)") || !strings.Contains(pe.Message, reason) {
			t.Fatalf("message %q does not give MTA-STS and %q as the reason", pe.Message, reason)
		}
		if r := delivery.TLSRemote(err); r == nil || r.TLSPolicy != "mta-sts" || r.TLSFailure != result || r.Host != "mx."+domain {
			t.Fatalf("TLSRemote = %+v, want mta-sts, tls_failure %q", r, result)
		}
	}

	t.Run("enforce, valid certificate: delivered", func(t *testing.T) {
		r := send(t, "good.test")
		if r.TLSPolicy != "mta-sts" || !r.TLSValidated || r.TLS == "" || r.TLSCipher == "" || r.MTASTSFailure != "" {
			t.Fatalf("Remote() = %+v", r)
		}
		if n := len(goodSink.Messages()); n != 1 {
			t.Fatalf("sink got %d messages", n)
		}
	})
	t.Run("enforce, certificate for another name: deferred", func(t *testing.T) {
		deferred(t, "wrong.test", "4.7.5", "certificate is not valid for this host name", "certificate-host-mismatch")
	})
	t.Run("enforce, no STARTTLS: deferred", func(t *testing.T) {
		deferred(t, "plain.test", "4.7.10", "STARTTLS not offered", "starttls-not-supported")
	})
	t.Run("enforce, no MX host matches: deferred", func(t *testing.T) {
		deferred(t, "nomatch.test", "4.7.5", "no MX host of nomatch.test matches", "validation-failure")
	})
	if len(wrongSink.Messages())+len(plainSink.Messages()) != 0 || len(goodSink.Messages()) != 1 {
		t.Fatal("a sink got mail an enforced policy refused")
	}
	t.Run("testing mode: delivered, failure recorded", func(t *testing.T) {
		r := send(t, "testing.test")
		if r.TLSPolicy != "opportunistic" || r.TLSValidated || !strings.Contains(r.MTASTSFailure, "certificate not valid for mx.testing.test") || r.TLSFailure != "certificate-host-mismatch" {
			t.Fatalf("Remote() = %+v", r)
		}
		if n := len(wrongSink.Messages()); n != 1 {
			t.Fatalf("sink got %d messages", n)
		}
	})
	t.Run("no policy: opportunistic, not validated", func(t *testing.T) {
		e.DNS.AddMX("nopolicy.test", 10, "mx.nopolicy.test")
		e.DNS.AddA("mx.nopolicy.test", "127.0.0.3")
		r := send(t, "nopolicy.test")
		if r.TLSPolicy != "opportunistic" || r.TLSValidated || r.MTASTSFailure != "" {
			t.Fatalf("Remote() = %+v", r)
		}
	})
	t.Run("stale policy enforced when the refresh fails", func(t *testing.T) {
		deferred(t, "stale.test", "4.7.5", "certificate", "certificate-host-mismatch")
		hits := servers["mta-sts.stale.test"].Hits()
		e.DNS.Remove("_mta-sts.stale.test")
		e.DNS.AddTXT("_mta-sts.stale.test", "v=STSv1; id=2")
		servers["mta-sts.stale.test"].Set("", 503)
		deferred(t, "stale.test", "4.7.5", "certificate", "certificate-host-mismatch")
		if got := servers["mta-sts.stale.test"].Hits(); got <= hits {
			t.Fatalf("policy not refetched after the id changed (hits %d, before %d)", got, hits)
		}
	})
}
