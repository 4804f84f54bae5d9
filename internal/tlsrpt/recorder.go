package tlsrpt

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sluice-mta/sluice/internal/mtasts"
)

// Session is the outcome of one TLS policy evaluation: one connection
// attempt to an MX host under a policy (RFC 8460 counts sessions, not
// messages), or a policy that could not be applied at all (a policy
// fetch failure, no MX host matching an MTA-STS policy).
type Session struct {
	// Time is when the session was evaluated; it picks the UTC day.
	Time time.Time
	// Domain is the policy domain: the recipient domain.
	Domain string
	// Type is PolicySTS, PolicyTLSA or PolicyNotFound.
	Type string
	// Policy is the policy text (PolicyString lines for MTA-STS, the TLSA
	// records for DANE); nil for PolicyNotFound.
	Policy []string
	// PolicyMX are the MX patterns of an MTA-STS policy (the report's
	// mx-host); the MX hosts seen are used when it is empty.
	PolicyMX []string
	// MXHost, ReceivingIP and SendingIP describe the connection ("" when
	// there was none).
	MXHost, ReceivingIP, SendingIP string
	// Result is "" for a successful session, else a result type
	// (Result*).
	Result string
	// Detail is a short human-readable reason (additional-information).
	Detail string
}

// PolicyString is an MTA-STS policy as the report's policy-string: its
// lines, in the RFC 8461 section 3.2 order.
func PolicyString(p *mtasts.Policy) []string {
	out := []string{"version: STSv1", "mode: " + p.Mode}
	for _, mx := range p.MX {
		out = append(out, "mx: "+mx)
	}
	return append(out, fmt.Sprintf("max_age: %d", int64(p.MaxAge/time.Second)))
}

// Store keeps the Recorder's rows across restarts (the spool, under its
// own key prefix). Keys are printable; a nil value deletes the key.
type Store interface {
	PutTLSReports(rows map[string][]byte) error
	TLSReports() (map[string][]byte, error)
}

// Limits of a Recorder (Options fields that are 0 take these).
const (
	DefaultMaxPolicies = 10000 // distinct (day, domain, policy type) rows
	DefaultMaxDetails  = 100   // distinct failure-detail rows per policy row
	DefaultMaxMX       = 32    // MX host names kept per policy row
	DefaultKeepDays    = 7     // days of rows kept (for reports sent late and the CLI)
)

// Options configures a Recorder.
type Options struct {
	Store  Store        // nil: memory only
	Logger *slog.Logger // nil: slog.Default()
	// MaxPolicies bounds the rows in memory over all days; a session for
	// a new row beyond it is dropped (counted in Dropped, logged once a
	// minute at most). Default DefaultMaxPolicies.
	MaxPolicies int
	// MaxDetails bounds the distinct failure details of one row; further
	// kinds still count in the failure total, without a detail.
	// Default DefaultMaxDetails.
	MaxDetails int
	// KeepDays is how many UTC days of rows are kept (Prune); default
	// DefaultKeepDays.
	KeepDays int
	Now      func() time.Time // default time.Now
}

// row is one (day, domain, policy type) of counts; its JSON form is what
// the Store keeps.
type row struct {
	Day     string          `json:"day"`
	Domain  string          `json:"domain"`
	Type    string          `json:"type"`
	Policy  []string        `json:"policy,omitempty"`
	PMX     []string        `json:"pmx,omitempty"`
	MX      []string        `json:"mx,omitempty"`
	OK      int64           `json:"ok"`
	Fail    int64           `json:"fail"`
	Details []FailureDetail `json:"details,omitempty"`
	dirty   bool
}

// rowKey is the key of the (day, domain, policy type) row, in memory and
// in the Store.
func rowKey(day, domain, typ string) string { return "a/" + day + "/" + domain + "/" + typ }

// Recorder aggregates Sessions. It is safe for concurrent use; Record
// takes one mutex and never does I/O.
type Recorder struct {
	o       Options
	mu      sync.Mutex
	rows    map[string]*row
	sent    map[string]time.Time // "day/domain" → when the report went out
	dirty   map[string]bool      // sent keys to save
	dropped int64
	lastLog time.Time
}

// NewRecorder returns a Recorder; call Load to read the Store's rows.
func NewRecorder(o Options) *Recorder {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	o.MaxPolicies = cmp.Or(o.MaxPolicies, DefaultMaxPolicies)
	o.MaxDetails = cmp.Or(o.MaxDetails, DefaultMaxDetails)
	o.KeepDays = cmp.Or(o.KeepDays, DefaultKeepDays)
	return &Recorder{o: o, rows: map[string]*row{}, sent: map[string]time.Time{}, dirty: map[string]bool{}}
}

// Load reads the Store's rows (replacing what is in memory). Call it
// once, before the first Record.
func (r *Recorder) Load() error {
	if r.o.Store == nil {
		return nil
	}
	all, err := r.o.Store.TLSReports()
	if err != nil {
		return fmt.Errorf("tls reporting: loading counts: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, v := range all {
		switch {
		case strings.HasPrefix(k, "a/"):
			var rw row
			if err := json.Unmarshal(v, &rw); err != nil {
				r.o.Logger.Warn("tls reporting: unreadable stored row dropped", "key", k, "err", err)
				continue
			}
			r.rows[k] = &rw
		case strings.HasPrefix(k, "s/"):
			var t time.Time
			if err := t.UnmarshalText(v); err == nil {
				r.sent[k[2:]] = t
			}
		}
	}
	return nil
}

// Record counts s.
func (r *Recorder) Record(s Session) {
	if s.Domain == "" {
		return
	}
	if s.Time.IsZero() {
		s.Time = r.o.Now()
	}
	day := s.Time.UTC().Format(time.DateOnly)
	dom := strings.ToLower(strings.TrimSuffix(s.Domain, "."))
	k := rowKey(day, dom, s.Type)
	r.mu.Lock()
	defer r.mu.Unlock()
	rw := r.rows[k]
	if rw == nil {
		if len(r.rows) >= r.o.MaxPolicies {
			r.dropped++
			if now := r.o.Now(); now.Sub(r.lastLog) > time.Minute {
				r.lastLog = now
				r.o.Logger.Warn("tls reporting: too many policy domains today; sessions not counted",
					"max_policies", r.o.MaxPolicies, "dropped", r.dropped, "domain", dom)
			}
			return
		}
		rw = &row{Day: day, Domain: dom, Type: s.Type}
		r.rows[k] = rw
	}
	rw.dirty = true
	if s.Policy != nil {
		rw.Policy = s.Policy
	}
	if s.PolicyMX != nil {
		rw.PMX = s.PolicyMX
	}
	if s.MXHost != "" && len(rw.MX) < DefaultMaxMX && !slices.Contains(rw.MX, s.MXHost) {
		rw.MX = append(rw.MX, s.MXHost)
	}
	if s.Result == "" {
		rw.OK++
		return
	}
	rw.Fail++
	for i := range rw.Details {
		d := &rw.Details[i]
		if d.ResultType == s.Result && d.ReceivingMXHostname == s.MXHost && d.ReceivingIP == s.ReceivingIP &&
			d.SendingMTAIP == s.SendingIP && d.AdditionalInfo == s.Detail {
			d.FailedSessionCount++
			return
		}
	}
	if len(rw.Details) < r.o.MaxDetails {
		rw.Details = append(rw.Details, FailureDetail{ResultType: s.Result, SendingMTAIP: s.SendingIP,
			ReceivingMXHostname: s.MXHost, ReceivingIP: s.ReceivingIP, FailedSessionCount: 1, AdditionalInfo: s.Detail})
	}
}

// Dropped is how many sessions were not counted because MaxPolicies
// rows existed.
func (r *Recorder) Dropped() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dropped
}

// Flush saves the rows changed since the last Flush, and drops the
// rows and sent marks older than KeepDays, in one Store write.
func (r *Recorder) Flush() error {
	if r.o.Store == nil {
		return nil
	}
	oldest := r.o.Now().UTC().AddDate(0, 0, -r.o.KeepDays).Format(time.DateOnly)
	out := map[string][]byte{}
	r.mu.Lock()
	var changed []*row
	for k, rw := range r.rows {
		switch {
		case rw.Day < oldest:
			delete(r.rows, k)
			out[k] = nil
		case rw.dirty:
			b, err := json.Marshal(rw)
			if err != nil {
				r.mu.Unlock()
				return err
			}
			out[k] = b
			rw.dirty = false
			changed = append(changed, rw)
		}
	}
	for k := range r.dirty {
		b, _ := r.sent[k].MarshalText()
		out["s/"+k] = b
	}
	for k := range r.sent {
		if k[:min(len(k), 10)] < oldest {
			delete(r.sent, k)
			out["s/"+k] = nil
		}
	}
	dirtySent := r.dirty
	r.dirty = map[string]bool{}
	r.mu.Unlock()
	if len(out) == 0 {
		return nil
	}
	if err := r.o.Store.PutTLSReports(out); err != nil {
		r.mu.Lock()
		for _, rw := range changed {
			rw.dirty = true
		}
		for k := range dirtySent {
			r.dirty[k] = true
		}
		r.mu.Unlock()
		return fmt.Errorf("tls reporting: saving counts: %w", err)
	}
	return nil
}

// Run flushes every interval until ctx ends, then once more.
func (r *Recorder) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if err := r.Flush(); err != nil {
				r.o.Logger.Error("tls reporting: final flush failed", "err", err)
			}
			return
		case <-t.C:
			if err := r.Flush(); err != nil {
				r.o.Logger.Warn("tls reporting: flush failed", "err", err)
			}
		}
	}
}

// Domains lists the policy domains with counts on day ("2006-01-02"),
// sorted.
func (r *Recorder) Domains(day string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, rw := range r.rows {
		if rw.Day == day && !slices.Contains(out, rw.Domain) {
			out = append(out, rw.Domain)
		}
	}
	sort.Strings(out)
	return out
}

// MarkSent records that day's report for domain was delivered.
func (r *Recorder) MarkSent(day, domain string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sent[day+"/"+domain] = r.o.Now().UTC()
	r.dirty[day+"/"+domain] = true
}

// Sent reports whether day's report for domain was delivered.
func (r *Recorder) Sent(day, domain string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.sent[day+"/"+domain]
	return ok
}

// Meta is what a report says about its sender (the configuration's
// organization and contact, and the host name in report ids).
type Meta struct {
	Organization string
	Contact      string
	Hostname     string
}

// Report builds day's aggregate report for domain, or nil when nothing
// was recorded for it that day. Policies are in the order sts, tlsa,
// no-policy-found; failure details by descending count. The report-id is
// "DAY_DOMAIN@HOSTNAME" with the day as 20061102T000000Z (unique per
// reporter, domain and day, as section 4.4 asks).
func (r *Recorder) Report(day, domain string, m Meta) (*Report, error) {
	start, err := Day(day)
	if err != nil {
		return nil, err
	}
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	rep := &Report{OrganizationName: m.Organization, DateRange: dayRange(start), ContactInfo: m.Contact,
		ReportID: start.Format("20060102T150405Z") + "_" + domain + "@" + m.Hostname}
	r.mu.Lock()
	for _, typ := range []string{PolicySTS, PolicyTLSA, PolicyNotFound} {
		rw := r.rows[rowKey(day, domain, typ)]
		if rw == nil {
			continue
		}
		mx := rw.PMX
		if len(mx) == 0 {
			mx = rw.MX
		}
		pr := PolicyResult{
			Policy:         PolicyDesc{Type: rw.Type, String: slices.Clone(rw.Policy), Domain: rw.Domain, MXHost: slices.Clone(mx)},
			Summary:        Summary{Successful: rw.OK, Failure: rw.Fail},
			FailureDetails: slices.Clone(rw.Details),
		}
		sort.SliceStable(pr.FailureDetails, func(i, j int) bool {
			return pr.FailureDetails[i].FailedSessionCount > pr.FailureDetails[j].FailedSessionCount
		})
		rep.Policies = append(rep.Policies, pr)
	}
	r.mu.Unlock()
	if len(rep.Policies) == 0 {
		return nil, nil
	}
	return rep, nil
}
