package pipeline

import (
	"context"
	"testing"
)

// benchStage continues at every hook it has; the last one routes.
type benchStage struct {
	name  string
	route bool
}

func (s *benchStage) Name() string { return s.name }
func (s *benchStage) OnMail(context.Context, *Txn) (Verdict, error) {
	return Verdict{}, nil
}
func (s *benchStage) OnRcpt(context.Context, *Txn, *Recipient) (Verdict, error) {
	return Verdict{}, nil
}
func (s *benchStage) OnMessage(context.Context, *Message) (Verdict, error) {
	return Verdict{}, nil
}
func (s *benchStage) OnRoute(context.Context, *Message, *Recipient) (Verdict, error) {
	if s.route {
		return RouteVerdict(MX()), nil
	}
	return Verdict{}, nil
}

// BenchmarkChainTxn runs one transaction's hooks (on_mail, on_rcpt,
// on_message, on_route for one recipient) through a chain of three stages
// with no Trace set: the cost the chain adds per message in production.
// BenchmarkChainTxnTraced is the same with a Trace observer (sluice test).
func BenchmarkChainTxn(b *testing.B)       { benchChain(b, false) }
func BenchmarkChainTxnTraced(b *testing.B) { benchChain(b, true) }

func benchChain(b *testing.B, traced bool) {
	opts := ChainOptions{RecoverPanics: true}
	n := 0
	if traced {
		opts.Trace = traceCounter(&n)
	}
	c, err := Compile([]Stage{&benchStage{name: "a"}, &benchStage{name: "b"}, &benchStage{name: "c", route: true}}, opts)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	conn := &Conn{Source: SourceSMTP, RelayNetwork: true}
	r, _ := NewRecipient("bob@example.org")
	b.ReportAllocs()
	for b.Loop() {
		txn := &Txn{Conn: conn, Sender: "a@example.com"}
		if err := c.Mail(ctx, txn); err != nil {
			b.Fatal(err)
		}
		if err := c.Rcpt(ctx, txn, r); err != nil {
			b.Fatal(err)
		}
		msg := &Message{Txn: txn}
		if _, _, err := c.Message(ctx, msg); err != nil {
			b.Fatal(err)
		}
		if _, _, err := c.Route(ctx, msg, r); err != nil {
			b.Fatal(err)
		}
	}
}

func traceCounter(n *int) func(TraceCall) {
	return func(TraceCall) { *n++ }
}
