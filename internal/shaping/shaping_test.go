package shaping

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	tu "github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

func TestParseThrottle(t *testing.T) {
	for _, tc := range []struct {
		spec    string
		q       int
		p       time.Duration
		burst   int
		wantErr string
	}{
		{"10/s", 10, time.Second, 1, ""},
		{"1,000/day", 1000, 24 * time.Hour, 1, ""},
		{"local:500/hr", 500, time.Hour, 1, ""},
		{"6/m,max_burst=6", 6, time.Minute, 6, ""},
		{"1/minute", 1, time.Minute, 1, ""},
		{"100/30min", 100, 30 * time.Minute, 1, ""},
		{"10", 0, 0, 0, "want QUANTITY/PERIOD"},
		{"0/s", 0, 0, 0, "at least 1"},
		{"10/fortnight", 0, 0, 0, "unknown period"},
		{"10/s,max_burst=0", 0, 0, 0, "max_burst"},
	} {
		th, err := ParseThrottle(tc.spec)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: err %v, want %q", tc.spec, err, tc.wantErr)
			}
			continue
		}
		if err != nil || th.Quantity != tc.q || th.Period != tc.p || th.Burst != tc.burst || th.String() != tc.spec {
			t.Errorf("%q: %+v %v", tc.spec, th, err)
		}
	}
}

// TestExampleFile: the shipped shaping file parses with no warnings,
// and a piece of KumoMTA's own file (keys that Sluice does not apply,
// a SetConfig of one of them, a look-ahead regex) loads with warnings only.
func TestExampleFile(t *testing.T) {
	r, err := LoadFiles("../../examples/shaping/shaping.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Warnings) != 0 {
		t.Errorf("warnings: %q", r.Warnings)
	}
	if len(r.Default.Automation) != 2 || len(r.Providers) != 5 || r.Domains["comcast.net"] == nil {
		t.Errorf("default automation %d, providers %d, domains %v", len(r.Default.Automation), len(r.Providers), r.Domains)
	}
	g := r.Providers[1]
	if g.Name != "google" || *g.Params.ConnectionLimit != 5 || *g.Params.MaxDeliveriesPerConnection != 50 || len(g.MXSuffixes) != 2 {
		t.Errorf("google: %+v", g)
	}
	kumo := `["default"]
connection_limit = 10
max_connection_rate = "100/min"
enable_tls = "Opportunistic"

["comcast.net"]
connection_limit = 25

[["comcast.net".automation]]
regex = "RL0000"
action = {SetConfig={name="max_connection_rate", value="10000/h"}}
trigger = {Threshold="2/hr"}
duration = "2 hours"

[["comcast.net".automation]]
regex = "^(?!.*KumoMTA internal).*RL000010"
trigger = "Immediate"
action = "SuspendTenant"
duration = "5 minutes"
`
	kumo += "\n[provider.\"gmail\"]\nconnection_limit = \"local:5\"\n" // no match anywhere: unused, a warning
	r, err = Parse("kumo.toml", []byte(kumo))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Warnings) != 5 || len(r.Domains["comcast.net"].Automation) != 0 || len(r.Providers) != 0 {
		t.Errorf("warnings %q, providers %v", r.Warnings, r.Providers)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{`["default"]` + "\nconection_limit = 3", `["default"]: unknown key "conection_limit"`},
		{`["default"]` + "\nconnection_limit = 0", `connection_limit: want a whole number of at least 1`},
		{`["x.test"]` + "\nmax_message_rate = \"ten/s\"", `["x.test"]: max_message_rate: throttle "ten/s"`},
		{`[["default".automation]]` + "\nregex = \"x\"\naction = \"Explode\"\nduration = \"1m\"", `unknown action "Explode"`},
		{`[["default".automation]]` + "\nregex = \"x\"\naction = \"Suspend\"", `duration: want a positive duration`},
		{`[["default".automation]]` + "\naction = \"Suspend\"\nduration = \"1m\"", `regex is required`},
		{`["default"]` + "\nidle_timeout = \"soon\"", `idle_timeout: "soon" is not a duration`},
		{`["default"`, `shaping: bad.toml:`},
		// found by the newcomer review: a broken regex and a negative
		// timeout passed `sluice check` (the rule was skipped, the
		// timeout was taken as is)
		{`[["default".automation]]` + "\nregex = \"(abc\"\naction = \"Suspend\"\nduration = \"1m\"", `automation[1]: regex "(abc": error parsing regexp: missing closing )`},
		{`["default"]` + "\nidle_timeout = \"-5s\"", `idle_timeout: want a positive duration`},
		{`["default"]` + "\nconnect_timeout = \"0s\"", `connect_timeout: want a positive duration`},
	} {
		_, err := Parse("bad.toml", []byte(tc.src))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err %v, want %q", tc.src, err, tc.want)
		}
	}
}

// events collects emitted events.
type events struct {
	mu  sync.Mutex
	evs []*pipeline.Event
}

func (e *events) emit(ev *pipeline.Event) { e.mu.Lock(); e.evs = append(e.evs, ev); e.mu.Unlock() }
func (e *events) list() []*pipeline.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]*pipeline.Event(nil), e.evs...)
}

func newShaper(t testing.TB, toml string, o Options) (*Shaper, *events, *prometheus.Registry) {
	t.Helper()
	r, err := Parse("t.toml", []byte(toml))
	if err != nil {
		t.Fatal(err)
	}
	evs := &events{}
	reg := prometheus.NewRegistry()
	o.Rules, o.Emit, o.Metrics, o.Node, o.Logger = r, evs.emit, reg, "n1", slog.New(slog.DiscardHandler)
	if o.Resolver == nil {
		res, err := dnsx.New(dnsx.Options{Server: dnstest.NewServer(t).Addr()})
		if err != nil {
			t.Fatal(err)
		}
		o.Resolver = res
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s, evs, reg
}

// TestSites: domains with the same MX hosts are one site, named by the
// sorted hosts; a provider's suffix names the site; mx_rollup = false
// and a domain without MX records are their own sites; a domain entry's
// limits hold for every domain of its site.
func TestSites(t *testing.T) {
	dns := dnstest.NewServer(t)
	dns.AddMX("a.test", 10, "mx2.hoster.test")
	dns.AddMX("a.test", 20, "MX1.hoster.test.")
	dns.AddMX("b.test", 5, "mx1.hoster.test")
	dns.AddMX("b.test", 5, "mx2.hoster.test")
	dns.AddMX("c.test", 10, "aspmx.l.google.com")
	dns.AddMX("c.test", 20, "alt1.aspmx.l.google.com")
	dns.AddMX("d.test", 10, "mx1.hoster.test")
	dns.AddMX("d.test", 20, "mx2.hoster.test")
	dns.AddA("e.test", "192.0.2.1")
	res, err := dnsx.New(dnsx.Options{Server: dns.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	s, _, _ := newShaper(t, `
["b.test"]
connection_limit = 3
[provider."google"]
match = [{MXSuffix = ".google.com"}]
connection_limit = 7
["d.test"]
mx_rollup = false
connection_limit = 1
`, Options{Resolver: res, Defaults: Params{ConnectionLimit: ptr(10)}})
	ctx := context.Background()
	for d, want := range map[string]string{"a.test": "mx1.hoster.test,mx2.hoster.test", "b.test": "mx1.hoster.test,mx2.hoster.test",
		"c.test": "google", "d.test": "d.test", "e.test": "e.test", "[192.0.2.9]": "[192.0.2.9]"} {
		if got := s.Site(ctx, d); got != want {
			t.Errorf("site of %s = %q, want %q", d, got, want)
		}
	}
	for site, want := range map[string]int{"mx1.hoster.test,mx2.hoster.test": 3, "google": 7, "d.test": 1, "e.test": 10} {
		if got := s.PoolConnections(site, ""); got != want {
			t.Errorf("connections of %s = %d, want %d", site, got, want)
		}
	}
}

func ptr[T any](v T) *T { return &v }

// TestConnectionsAndSources: a pool's sources take connections round
// robin up to each one's limit; a Suspend for one source leaves the
// other; SuspendSite stops both; both resume after the duration with an
// event each.
func TestConnectionsAndSources(t *testing.T) {
	s, evs, reg := newShaper(t, `
["default"]
connection_limit = 1
[["default".automation]]
regex = ['''^554 5\.7\.1 .*blocklisted''']
action = "Suspend"
duration = "300ms"
[["default".automation]]
regex = '''^421 4\.7\.0 Go away'''
action = "SuspendSite"
duration = "300ms"
`, Options{Sources: []Source{{Name: "s2", Address: netip.MustParseAddr("127.0.0.2")}, {Name: "s3", Address: netip.MustParseAddr("127.0.0.3")}},
		Pools: map[string][]string{"P": {"s2", "s3"}}})
	if s.PoolConnections("site", "P") != 2 {
		t.Fatalf("pool connections %d, want 2", s.PoolConnections("site", "P"))
	}
	l1, _, _, err := s.Acquire("site", "P", time.Second)
	l2, _, _, _ := s.Acquire("site", "P", time.Second)
	if err != nil || l1 == nil || l2 == nil || l1.Source.Name == l2.Source.Name {
		t.Fatalf("two leases from two sources: %v %v %v", l1, l2, err)
	}
	if l, retry, why, _ := s.Acquire("site", "P", time.Second); l != nil || why != ReasonConnections || retry.IsZero() {
		t.Fatalf("third lease: %v %v %q", l, retry, why)
	}
	if _, _, _, err := s.Acquire("site", "nope", time.Second); err == nil || pipeline.Reply(err).Code != 451 {
		t.Errorf("unknown pool: %v", err)
	}
	blocked := l1.Source.Name
	l1.Observe([]*pipeline.Response{{Code: 554, Enhanced: "5.7.1", Text: "your IP is blocklisted"}}, &pipeline.Remote{Host: "mx.site", IP: "192.0.2.1"})
	if retry, why, _ := l1.Wait(context.Background(), time.Second); why != ReasonSuspended || retry.IsZero() {
		t.Errorf("wait on a suspended source: %q %v", why, retry)
	}
	l1.Release()
	l2.Release()
	for i := 0; i < 3; i++ { // only the other source, round robin or not
		l, _, why, _ := s.Acquire("site", "P", time.Second)
		if l == nil || l.Source.Name == blocked {
			t.Fatalf("acquire %d while %s is suspended: %v %q", i, blocked, l, why)
		}
		l.Release()
	}
	tu.WaitFor(t, "source resumed", func() bool { return len(evs.list()) == 2 })
	e := evs.list()
	if e[0].Type != pipeline.EventShapingSuspended || e[0].Metadata["egress_source"] != blocked || e[0].Remote.IP != "192.0.2.1" ||
		e[1].Type != pipeline.EventShapingResumed || e[1].Metadata["egress_source"] != blocked {
		t.Errorf("events %+v %+v", e[0], e[1])
	}
	l, _, _, _ := s.Acquire("site", "P", time.Second)
	l.Observe([]*pipeline.Response{{Code: 421, Enhanced: "4.7.0", Text: "Go away"}}, nil)
	l.Observe([]*pipeline.Response{{Code: 421, Enhanced: "4.7.0", Text: "Go away"}}, nil) // extends, no second event
	l.Release()
	if l, _, why, _ := s.Acquire("site", "P", time.Second); l != nil || why != ReasonSuspended {
		t.Fatalf("acquire on a suspended site: %v %q", l, why)
	}
	tu.WaitFor(t, "site resumed", func() bool { return len(evs.list()) == 4 })
	e = evs.list()
	if e[2].Type != pipeline.EventShapingSuspended || e[2].Metadata["egress_source"] != "" || e[2].Metadata["action"] != "SuspendSite" ||
		e[3].Type != pipeline.EventShapingResumed {
		t.Errorf("events %+v %+v", e[2], e[3])
	}
	if l, _, _, _ := s.Acquire("site", "P", time.Second); l == nil {
		t.Error("no lease after the site resumed")
	}
	for _, ev := range e {
		ev.EventID, ev.Time, ev.Schema = "01KAT6Z4M3N5J6WQ3S7E1V0R2B", time.Now(), pipeline.EventSchema
		tu.ValidateEventValue(t, ev)
	}
	if got := testutil.ToFloat64(s.changes.WithLabelValues("suspended")); got != 2 {
		t.Errorf("suspended changes %v, want 2", got)
	}
	if got := testutil.ToFloat64(s.suspGage); got != 0 {
		t.Errorf("suspended gauge %v after both resumed", got)
	}
	if n, err := testutil.GatherAndCount(reg, "sluice_shaping_changes_total", "sluice_shaping_delayed_total", "sluice_shaping_suspended"); err != nil || n != 8 {
		t.Errorf("metrics: %d series, %v", n, err)
	}
}

// TestSetConfigLowersRate: a "slow down" reply lowers the message rate
// of the site and source; Wait then refuses to hold a message longer than
// its bound and says when to come back; after the duration the rate is
// restored, with an event.
func TestSetConfigLowersRate(t *testing.T) {
	s, evs, _ := newShaper(t, `
["default"]
max_message_rate = "1000/s"
[["default".automation]]
regex = 'rate limited'
action = [{SetConfig = {name = "max_message_rate", value = "1/hour"}}, {SetConfig = {name = "max_deliveries_per_connection", value = 2}}]
duration = "400ms"
`, Options{})
	l, _, _, _ := s.Acquire("site", "", time.Second)
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if retry, why, err := l.Wait(ctx, time.Second); !retry.IsZero() || err != nil {
			t.Fatalf("wait %d at 1000/s: %v %q %v", i, retry, why, err)
		}
	}
	l.Observe([]*pipeline.Response{{Code: 451, Enhanced: "4.7.1", Text: "you are being rate limited"}}, nil)
	if l.MaxPerConnection() != 2 {
		t.Errorf("max per connection %d after SetConfig, want 2", l.MaxPerConnection())
	}
	l.Wait(ctx, time.Second) // the first of the hour
	retry, why, _ := l.Wait(ctx, time.Second)
	if why != ReasonRate || time.Until(retry) < 30*time.Minute {
		t.Errorf("second message at 1/hour: retry in %v, %q", time.Until(retry), why)
	}
	tu.WaitFor(t, "rate restored", func() bool { return len(evs.list()) == 4 })
	for _, e := range evs.list() {
		if e.Queue != "site" || e.Source != "shaping" {
			t.Errorf("event %+v", e)
		}
	}
	if e := evs.list()[0]; e.Type != pipeline.EventShapingThrottled || e.Metadata["value"] != "1/hour" || e.Metadata["config"] != "max_message_rate" {
		t.Errorf("throttled event %+v", e)
	}
	if retry, _, _ := l.Wait(ctx, time.Second); !retry.IsZero() {
		t.Errorf("after the override ended: retry %v", retry)
	}
	if l.MaxPerConnection() == 2 {
		t.Error("max per connection still lowered")
	}
}

// TestWarmup: a source's daily volume follows its schedule; past it
// Acquire and Wait send the caller to the next UTC day.
func TestWarmup(t *testing.T) {
	start := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	w := &Warmup{Start: start, Steps: []WarmupStep{{Days: 2, Daily: 3}, {Days: 1, Daily: 10}}}
	for _, tc := range []struct {
		at   time.Time
		want int
	}{{start.Add(-time.Hour), 3}, {start, 3}, {start.Add(47 * time.Hour), 3}, {start.Add(48 * time.Hour), 10}, {start.Add(72 * time.Hour), -1}} {
		if got := w.Limit(tc.at); got != tc.want {
			t.Errorf("limit at %v = %d, want %d", tc.at, got, tc.want)
		}
	}
	now := start.Add(12 * time.Hour)
	s, _, _ := newShaper(t, "", Options{Sources: []Source{{Name: "new", Warmup: w}}, Pools: map[string][]string{"P": {"new"}},
		Now: func() time.Time { return now }})
	l, _, _, _ := s.Acquire("site", "P", time.Second)
	for i := 0; i < 3; i++ {
		if retry, _, _ := l.Wait(context.Background(), time.Second); !retry.IsZero() {
			t.Fatalf("message %d of 3: held until %v", i+1, retry)
		}
	}
	retry, why, _ := l.Wait(context.Background(), time.Second)
	if why != ReasonWarmup || !retry.Equal(start.Add(24*time.Hour)) {
		t.Errorf("fourth message: %q until %v", why, retry)
	}
	l.Release()
	if l, retry, why, _ := s.Acquire("other", "P", time.Second); l != nil || why != ReasonWarmup || !retry.Equal(start.Add(24*time.Hour)) {
		t.Errorf("acquire past the day's volume: %v %q %v", l, why, retry)
	}
	now = start.Add(36 * time.Hour)
	if l, _, _, _ := s.Acquire("other", "P", time.Second); l == nil {
		t.Error("no lease on the next day")
	}
}

func TestNewErrors(t *testing.T) {
	if _, err := New(Options{Pools: map[string][]string{"P": {"ghost"}}}); err == nil || !strings.Contains(err.Error(), `unknown source "ghost"`) {
		t.Errorf("unknown source: %v", err)
	}
	if _, err := New(Options{DefaultPool: "none"}); err == nil {
		t.Error("unknown default pool accepted")
	}
}

// BenchmarkLeaseWait is shaping's cost per message on an open connection:
// Wait with a message rate that never binds, and Observe of a delivery
// without failures.
//
//	go test -run '^$' -bench LeaseWait -count 5 ./internal/shaping
func BenchmarkLeaseWait(b *testing.B) {
	s, _, _ := newShaper(b, "[\"default\"]\nmax_message_rate = \"1000000000/s,max_burst=1000\"\n", Options{Resolver: fakeResolver{}})
	l, _, _, _ := s.Acquire("site", "", time.Second)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if retry, _, _ := l.Wait(ctx, time.Second); !retry.IsZero() {
			b.Fatal("held")
		}
		l.Observe(nil, nil)
	}
}

// fakeResolver answers nothing; the benchmark names its site itself.
type fakeResolver struct{ dnsx.Resolver }

// TestThresholdTrigger: a rule with {Threshold = "3/minute"} fires at the
// third match within a minute, not before; matches older than the period
// do not count.
func TestThresholdTrigger(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	s, evs, _ := newShaper(t, `
[["default".automation]]
regex = 'RL0000'
trigger = { Threshold = "3/minute" }
action = "Suspend"
duration = "1h"
`, Options{Now: func() time.Time { return now }})
	l, _, _, _ := s.Acquire("site", "", time.Second)
	defer l.Release()
	hit := func() { l.Observe([]*pipeline.Response{{Code: 421, Text: "RL000010 slow down"}}, nil) }
	hit()
	now = now.Add(2 * time.Minute) // the first match is out of the window
	hit()
	hit()
	if n := len(evs.list()); n != 0 {
		t.Fatalf("%d events after 2 matches within the minute", n)
	}
	hit()
	if e := evs.list(); len(e) != 1 || e[0].Type != pipeline.EventShapingSuspended {
		t.Fatalf("after the third match within a minute: %v", e)
	}
	if _, err := Parse("t.toml", []byte("[[\"default\".automation]]\nregex = 'x'\naction = 'Suspend'\nduration = '1m'\ntrigger = { Threshold = 'often' }\n")); err == nil {
		t.Error("a bad threshold was accepted")
	}
}

// TestLaterFileOverlays: a second file adds to a provider that the first
// one matched, and overrides a value.
func TestLaterFileOverlays(t *testing.T) {
	dir := t.TempDir()
	a, b := dir+"/a.toml", dir+"/b.toml"
	os.WriteFile(a, []byte("[provider.\"big\"]\nmatch = [{MXSuffix = \".big.example\"}]\nconnection_limit = 5\n"), 0o644)
	os.WriteFile(b, []byte("[provider.\"big\"]\nconnection_limit = 2\n[[provider.\"big\".automation]]\nregex = 'x'\naction = 'Suspend'\nduration = '1m'\n"), 0o644)
	r, err := LoadFiles(a, b)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Providers) != 1 || *r.Providers[0].Params.ConnectionLimit != 2 || len(r.Providers[0].Automation) != 1 || len(r.Warnings) != 0 {
		t.Errorf("providers %+v, warnings %q", r.Providers, r.Warnings)
	}
}
