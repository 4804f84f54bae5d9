package capture

import (
	"fmt"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/pipeline"
)

// simulator applies the simulated recipient rules (sluice.sandbox
// { simulate = {...} }), compiled once at Open.
type simulator struct {
	rules []simRule
}

type simRule struct {
	config.SimulateRule
	prefix, suffix string // lower case; Match split at its '*' (or whole in prefix)
	wildcard       bool
	enhanced       pipeline.EnhancedCode
}

func newSimulator(rules []config.SimulateRule) (*simulator, error) {
	s := &simulator{}
	for i, r := range rules {
		sr := simRule{SimulateRule: r}
		m := strings.ToLower(r.Match)
		if strings.HasPrefix(m, "@") {
			sr.wildcard, sr.suffix = true, m
		} else if i := strings.IndexByte(m, '*'); i >= 0 {
			sr.wildcard, sr.prefix, sr.suffix = true, m[:i], m[i+1:]
		} else {
			sr.prefix = m
		}
		if r.Enhanced != "" {
			ec, err := pipeline.ParseEnhancedCode(r.Enhanced)
			if err != nil {
				return nil, fmt.Errorf("sandbox simulate rule %d: %w", i+1, err)
			}
			sr.enhanced = ec
		}
		s.rules = append(s.rules, sr)
	}
	return s, nil
}

// match returns the first rule for tenant's recipient addr, or nil.
func (s *simulator) match(tenant, addr string) *simRule {
	a := strings.ToLower(addr)
	for i := range s.rules {
		r := &s.rules[i]
		if r.Tenant != "" && r.Tenant != tenant {
			continue
		}
		if r.wildcard {
			if len(a) >= len(r.prefix)+len(r.suffix) && strings.HasPrefix(a, r.prefix) && strings.HasSuffix(a, r.suffix) {
				return r
			}
		} else if a == r.prefix {
			return r
		}
	}
	return nil
}

// simRemote is the remote recorded in events of capture deliveries.
var simRemote = pipeline.Remote{Host: "sandbox", IP: "127.0.0.1"}

// outcome is what a simulated recipient answers at attempt n: nil to
// accept, or the error a next hop's reply to the end of data would give
// (classified as delivery classifies real replies), and the delay before
// answering.
func (r *simRule) outcome(attempt int) (error, time.Duration) {
	if r == nil {
		return nil, 0
	}
	if r.Code < 400 || (r.Times > 0 && attempt > r.Times) {
		return nil, r.Delay
	}
	enh := r.enhanced
	if enh == (pipeline.EnhancedCode{}) {
		enh = pipeline.EnhancedCode{r.Code / 100, 0, 0}
	}
	text := r.Text
	if text == "" {
		text = "simulated reply"
	}
	cause := &delivery.ReplyError{Remote: simRemote, Command: "RCPT", Code: r.Code, Enhanced: r.enhanced, Text: text}
	return &pipeline.Error{Code: r.Code, Enhanced: enh, Message: text, Cause: cause}, r.Delay
}

// complaintDelay is how long after its capture a simulated complaint is
// recorded: after the delivery's own outcome, as a real one would be.
const complaintDelay = time.Second

// afterAccept runs what a rule does once its recipient accepted the
// message captured as sm: an out-of-office reply to the envelope sender
// (captured into the same inbox, from the null sender, RFC 3834), and a
// complaint (recorded through Options.Complain a second later).
func (s *Store) afterAccept(r *simRule, tenant string, env *delivery.Envelope, rcpt string, sm *Summary) {
	if r.AutoReply != "" && env.From != "" {
		msg := "From: <" + rcpt + ">\r\nTo: <" + env.From + ">\r\nSubject: Automatic reply: " + oneLine(sm.Subject) +
			"\r\nAuto-Submitted: auto-replied\r\n"
		if sm.HeaderID != "" {
			msg += "In-Reply-To: <" + sm.HeaderID + ">\r\nReferences: <" + sm.HeaderID + ">\r\n"
		}
		msg += "Date: " + s.o.Now().Format(time.RFC1123Z) + "\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + r.AutoReply + "\r\n"
		// Filed under the message it answers: its timeline, and a valid
		// message_id on a retention event.
		if _, err := s.Put(tenant, env.MsgID, "", []string{env.From}, []byte(msg)); err != nil {
			s.log.Warn("cannot capture a simulated auto-reply", "tenant", tenant, "rcpt", rcpt, "err", err)
		}
	}
	if r.Complaint && s.o.Complain != nil && env.MsgID != "" {
		s.later.Add(1)
		go func() {
			defer s.later.Done()
			t := time.NewTimer(complaintDelay)
			defer t.Stop()
			select {
			case <-t.C:
			case <-s.stop:
			}
			s.o.Complain(env.MsgID, rcpt)
		}()
	}
}

// oneLine keeps s to one header line.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, s)
}
