package pipeline

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// TestStageTimer: StageTimer is resolved once per hook a stage has (not
// for hooks it lacks) and observes every call, failures flagged.
func TestStageTimer(t *testing.T) {
	var mu sync.Mutex
	resolved := map[string]int{}
	calls := map[string]int{}
	failed := map[string]int{}
	timer := func(stage, hook string) func(time.Duration, bool) {
		mu.Lock()
		resolved[stage+"/"+hook]++
		mu.Unlock()
		return func(d time.Duration, f bool) {
			mu.Lock()
			defer mu.Unlock()
			calls[stage+"/"+hook]++
			if f {
				failed[stage+"/"+hook]++
			}
		}
	}
	ok := &hookStage{name: "ok", rcpt: func(*Recipient) (Verdict, error) { return Verdict{}, nil }}
	bad := &hookStage{name: "bad", rcpt: func(*Recipient) (Verdict, error) { return Verdict{}, errors.New("lua: attempt to index a nil value") }}
	c, err := Compile([]Stage{ok, panicStage{}, bad}, ChainOptions{StageTimer: timer, RecoverPanics: true})
	if err != nil {
		t.Fatal(err)
	}
	r, _ := NewRecipient("x@y.test")
	_ = c.Rcpt(context.Background(), &Txn{Conn: &Conn{RelayNetwork: true}}, r)
	_ = c.Mail(context.Background(), &Txn{Conn: &Conn{}})
	want := map[string]int{"ok/on_rcpt": 1, "bad/on_rcpt": 1, "boom/on_mail": 1}
	for k, n := range want {
		if resolved[k] != 1 || calls[k] != n {
			t.Errorf("%s: resolved %d, calls %d; want 1, %d", k, resolved[k], calls[k], n)
		}
	}
	if len(resolved) != len(want) {
		t.Errorf("resolved %v, want only %v", resolved, want)
	}
	if failed["bad/on_rcpt"] != 1 || failed["boom/on_mail"] != 1 || failed["ok/on_rcpt"] != 0 {
		t.Errorf("failures %v", failed)
	}
}

// BenchmarkChainRcpt: one on_rcpt call through the chain without and with
// a StageTimer (the cost of stage timing per hook call, the observer
// itself excluded).
func BenchmarkChainRcpt(b *testing.B) {
	st := &hookStage{name: "ok", rcpt: func(*Recipient) (Verdict, error) { return Verdict{}, nil }}
	for _, bc := range []struct {
		name  string
		timer func(string, string) func(time.Duration, bool)
	}{
		{"untimed", nil},
		{"timed", func(string, string) func(time.Duration, bool) { return func(time.Duration, bool) {} }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c, err := Compile([]Stage{st}, ChainOptions{StageTimer: bc.timer})
			if err != nil {
				b.Fatal(err)
			}
			r, _ := NewRecipient("x@y.test")
			txn := &Txn{Conn: &Conn{RelayNetwork: true}}
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				_ = c.Rcpt(ctx, txn, r)
			}
		})
	}
}
