package server

import (
	"context"
	"fmt"
	"time"

	"github.com/sluice-mta/sluice/internal/capture"
	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// checkSandbox validates what sluice.sandbox needs beyond its own keys: a
// sandbox SMTP listener needs the sandbox store.
func checkSandbox(cfg *config.Config) error {
	for _, l := range cfg.SMTP {
		if l.Sandbox != "" && cfg.Sandbox == nil {
			return fmt.Errorf("%s: sluice.listen_smtp %s: sandbox = %q needs sluice.sandbox { } (the capture store)", cfg.File, l.Addr, l.Sandbox)
		}
	}
	return nil
}

// openSandbox opens the capture store of sluice.sandbox (nil without it);
// retention events go to the spool's outbox.
func (s *Server) openSandbox(cfg *config.Config) (*capture.Store, error) {
	sb := cfg.Sandbox
	if sb == nil {
		return nil, nil
	}
	st, err := capture.Open(cfg.SandboxPath(), capture.Options{
		Retention: sb.Retention, Simulate: sb.Simulate, LinksAllow: sb.LinksAllow, Logger: s.log,
		SyncLag: captureSyncLag(sb.SyncLag),
		Record: func(evs []*pipeline.Event) error {
			b := s.sp.NewBatch()
			for _, ev := range evs {
				b.AddEvent(ev)
			}
			return b.Commit(false)
		},
		History: s.sp.History,
		MessageInfo: func(id string) ([]string, string) {
			m, err := s.sp.Meta(id)
			if err != nil {
				return nil, ""
			}
			return m.Tags, m.Source
		},
		Complain: s.complain,
		LookupTXT: func(ctx context.Context, name string) ([]string, error) {
			r, err := s.res.LookupTXT(ctx, name)
			if err != nil {
				return nil, dnsx.NetError(name, err)
			}
			return r.Records, nil
		},
	})
	if err != nil {
		return nil, fmt.Errorf("sluice.sandbox: %w", err)
	}
	s.log.Info("sandbox store opened", "path", cfg.SandboxPath(), "sandbox_tenants", sb.Tenants)
	return st, nil
}

// sandboxRouter is relay.Options.Sandbox for cfg: the inbox a
// connection's mail is captured into (its tenant is a sandbox tenant, or
// it came in on a sandbox SMTP listener); nil when nothing is captured
// as a whole.
func sandboxRouter(cfg *config.Config) func(c *pipeline.Conn) (string, bool) {
	tenants := map[string]bool{}
	listeners := map[string]string{}
	if cfg.Sandbox != nil {
		for _, t := range cfg.Sandbox.Tenants {
			tenants[t] = true
		}
	}
	for _, l := range cfg.SMTP {
		if l.Sandbox != "" {
			listeners[l.Name] = l.Sandbox
			if l.Name == "" {
				listeners[l.Addr] = l.Sandbox
			}
		}
	}
	if len(tenants) == 0 && len(listeners) == 0 {
		return nil
	}
	return func(c *pipeline.Conn) (string, bool) {
		if t := c.Tenant(); t != "" && tenants[t] {
			return t, true
		}
		if c.Source == pipeline.SourceSMTP {
			if t, ok := listeners[c.Listener]; ok {
				return t, true
			}
		}
		return "", false
	}
}

// complain records a simulated complaint by rcpt about message msgID: a
// "complained" event and a suppression entry (source "complaint") of
// the message's tenant.
func (s *Server) complain(msgID, rcpt string) {
	m, err := s.sp.Meta(msgID)
	if err != nil {
		// Settled messages are deleted from the spool; the history is
		// kept for status queries.
		evs, herr := s.sp.History(msgID)
		if herr != nil || len(evs) == 0 {
			s.log.Warn("simulated complaint: message unknown", "msgid", msgID, "rcpt", rcpt)
			return
		}
		ev := evs[0]
		m = &spool.Meta{ID: msgID, Sender: ev.Sender, Tenant: ev.Tenant, Source: ev.Source, Tags: ev.Tags, Meta: ev.Metadata}
	}
	// The entry names the complained event as a bounce's names its
	// bounced event; the id is set here so it is known before Commit.
	ev := &pipeline.Event{EventID: s.sp.NewID(), Type: pipeline.EventComplained, MessageID: msgID, Recipient: rcpt, Sender: m.Sender, Source: m.Source,
		Tenant: m.Tenant, Queue: "sandbox:" + m.Tenant, Tags: m.Tags, Metadata: map[string]string{"feedback_type": "abuse", "simulated": "true"}}
	b := s.sp.NewBatch()
	b.AddEvent(ev)
	if err := b.Commit(false); err != nil {
		s.log.Warn("simulated complaint: cannot record the event", "msgid", msgID, "err", err)
		ev.EventID = ""
	}
	if _, err := s.sp.AddSuppression(&spool.Suppression{Tenant: m.Tenant, Address: rcpt, Reason: "complaint (simulated feedback report)",
		Source: spool.SuppressionComplaint, EventID: ev.EventID, MessageID: msgID}); err != nil {
		s.log.Warn("simulated complaint: cannot add the suppression entry", "msgid", msgID, "rcpt", rcpt, "err", err)
	}
}

// captureSyncLag is capture.Options.SyncLag for sluice.sandbox's
// sync_lag: 0 there (sync every capture group) is negative here.
func captureSyncLag(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}
