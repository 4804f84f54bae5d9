package smtpsrc

import (
	"context"
	"log/slog"

	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-mta/sluice/internal/metrics"
	"github.com/sluice-mta/sluice/pipeline"
)

// Refusals answered by go-smtp itself (a command line too long, an
// unknown or malformed command, too many recipients, too many errors, an
// AUTH line too long) never reach the relay, which logs and counts every
// other refusal once (relay.logRefusal). go-smtp reports them through
// Server.OnRefusal (our patch); protocolRefusal logs each once, at info,
// and counts it in sluice_refusals_total with phase "protocol".

// protocolRefusals holds the listener's children of
// sluice_refusals_total for protocol refusals, by status class.
type protocolRefusals struct{ c4xx, c5xx prometheus.Counter }

func newProtocolRefusals(m *metrics.Node, listener string) *protocolRefusals {
	if m == nil {
		return nil
	}
	return &protocolRefusals{
		c4xx: m.Refused.WithLabelValues(pipeline.SourceSMTP, listener, "protocol", "", "4xx"),
		c5xx: m.Refused.WithLabelValues(pipeline.SourceSMTP, listener, "protocol", "", "5xx"),
	}
}

// protocolRefusal is the listener's go-smtp OnRefusal hook.
func (s *Server) protocolRefusal(c *smtp.Conn, code int, ec smtp.EnhancedCode, text string) {
	if p := s.protoRefused; p != nil {
		switch metrics.Status(code) {
		case "4xx":
			p.c4xx.Inc()
		case "5xx":
			p.c5xx.Inc()
		}
	}
	if !s.log.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	attrs := []slog.Attr{slog.Int("code", code), slog.String("enhanced", pipeline.EnhancedCode(ec).String()), slog.String("text", text)}
	if ss, ok := c.Session().(*session); ok && ss != nil && ss.conn != nil {
		attrs = append(attrs, slog.String("conn", ss.conn.ID), slog.String("remote_ip", ss.conn.RemoteIP.String()))
	} else if nc := c.Conn(); nc != nil {
		attrs = append(attrs, slog.String("remote_addr", nc.RemoteAddr().String()))
	}
	s.log.LogAttrs(context.Background(), slog.LevelInfo, "command refused", attrs...)
}
