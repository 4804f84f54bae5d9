package dkim

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluice-mta/sluice/internal/dkim"
	"github.com/sluice-mta/sluice/pipeline"
)

// mapResolver answers TXT questions from a map (unit tests; the golden
// and end-to-end tests use a DNS server on loopback).
type mapResolver map[string]string

func (m mapResolver) LookupTXT(_ context.Context, name string) ([]string, time.Duration, error) {
	if v, ok := m[name]; ok {
		return []string{v}, 0, nil
	}
	return nil, 0, pipeline.ErrDNSNotFound
}

// writeKey generates a key file in dir and returns its path and record.
func writeKey(t *testing.T, dir, name, algo string) (string, string) {
	t.Helper()
	k, err := dkim.Generate(algo)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := dkim.MarshalPrivateKey(k)
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, p, 0o600); err != nil {
		t.Fatal(err)
	}
	rec, _ := dkim.RecordValue(k)
	return name, rec
}

func env(dir string, res pipeline.Resolver) *pipeline.Env {
	return &pipeline.Env{Logger: slog.New(slog.DiscardHandler), Resolver: res, Hostname: "mx.test", ConfigDir: dir}
}

func TestSignerOptions(t *testing.T) {
	for _, c := range []struct {
		opts map[string]any
		want string
	}{
		{map[string]any{}, "no keys"},
		{map[string]any{"domain": "a.test", "selector": "s", "key": "k", "colour": "red"}, "unknown option colour"},
		{map[string]any{"domain": "a.test", "selector": "s", "key": "k", "canonicalization": "loose/simple"}, "canonicalization"},
		{map[string]any{"domain": "a.test", "selector": "s", "key": "k", "on_error": "ignore"}, "on_error"},
		{map[string]any{"keys": []any{map[string]any{"domain": "a.test", "selector": "s", "file": "k"}}}, "unknown option file"},
		{map[string]any{"keys": "k"}, "keys: want a list of tables"},
		{map[string]any{"domain": "a.test", "selector": "s", "key": "k", "expiration": "soon"}, "expiration"},
		{map[string]any{"domain": "a.test", "selector": "s", "key": "k", "oversign": []any{"Fr om"}}, `oversign: "Fr om" is not a header field name`},
		{map[string]any{"domain": "a.test", "selector": "s", "key": "k", "headers": []any{"Subject", "From:"}}, `headers: "From:" is not a header field name`},
		{map[string]any{"domain": "a.test", "selector": "s", "key": "k", "headers": []any{""}}, `headers: "" is not a header field name`},
	} {
		_, err := NewSigner("dkim", c.opts)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want %q", c.opts, err, c.want)
		}
	}
	// A key file that is missing or not a key fails Provision, naming it.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "junk.pem"), []byte("junk"), 0o600)
	for _, f := range []string{"missing.pem", "junk.pem"} {
		st, err := NewSigner("dkim", map[string]any{"domain": "a.test", "selector": "s", "key": f})
		if err != nil {
			t.Fatal(err)
		}
		if err := st.(pipeline.Provisioner).Provision(env(dir, nil)); err == nil || !strings.Contains(err.Error(), f) {
			t.Errorf("%s: %v", f, err)
		}
	}
	// bounce_domain must have a key.
	kf, _ := writeKey(t, dir, "a.pem", dkim.AlgoEd25519)
	st, _ := NewSigner("dkim", map[string]any{"domain": "a.test", "selector": "s", "key": kf, "bounce_domain": "b.test"})
	if err := st.(pipeline.Provisioner).Provision(env(dir, nil)); err != nil {
		t.Fatal(err)
	}
	if err := st.(pipeline.Validator).Validate(); err == nil || !strings.Contains(err.Error(), "b.test") {
		t.Errorf("bounce_domain without a key: %v", err)
	}
	// With keys = {} the error says no key is configured, rather than
	// ending in "keys are for )".
	st, _ = NewSigner("dkim", map[string]any{"keys": []any{}, "bounce_domain": "b.test"})
	if err := st.(pipeline.Provisioner).Provision(env(dir, nil)); err != nil {
		t.Fatal(err)
	}
	if err := st.(pipeline.Validator).Validate(); err == nil || !strings.Contains(err.Error(), `bounce_domain "b.test" has no key: keys lists none`) {
		t.Errorf("bounce_domain with keys = {}: %v", err)
	}
}

// scratchStage sets scratch values at on_message, as a Lua stage would.
type scratchStage map[string]string

func (scratchStage) Name() string { return "lua-like" }
func (s scratchStage) OnMessage(context.Context, *pipeline.Message) (pipeline.Verdict, error) {
	var v pipeline.Verdict
	for k, x := range s {
		v.Edits.SetScratch(k, x)
	}
	return v, nil
}

const raw = "From: a@a.test\r\nTo: b@x.test\r\nSubject: s\r\n\r\nbody\r\n"

// submitter is a connection from a client in relay_networks: mail this
// node sends, which dkim_sign signs.
func submitter() *pipeline.Conn {
	return &pipeline.Conn{Source: pipeline.SourceSMTP, RelayNetwork: true}
}

// signVia runs a chain [dkim_sign, scratch] over raw, submitted by a
// relay_networks client, and returns the message and the chain's error.
func signVia(t *testing.T, signer pipeline.Stage, scratch map[string]string) (*pipeline.Message, error) {
	t.Helper()
	return signViaConn(t, signer, submitter(), scratch)
}

// signViaConn is signVia for mail that arrived on conn.
func signViaConn(t *testing.T, signer pipeline.Stage, conn *pipeline.Conn, scratch map[string]string) (*pipeline.Message, error) {
	t.Helper()
	ch, err := pipeline.Compile([]pipeline.Stage{signer, scratchStage(scratch)}, pipeline.ChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := pipeline.ParseMessage(&pipeline.Txn{ID: "01T", Conn: conn}, []byte(raw))
	_, _, err = ch.Message(context.Background(), msg)
	return msg, err
}

// TestSignChoosesKeys: the From domain's keys by default (both
// algorithms), the Lua override, a missing override key as a temporary
// failure (or unsigned with on_error = "continue"), and dkim.skip.
func TestSignChoosesKeys(t *testing.T) {
	dir := t.TempDir()
	recs := mapResolver{}
	for _, k := range [][3]string{{"a.test", "r1", dkim.AlgoRSA}, {"a.test", "e1", dkim.AlgoEd25519}, {"b.test", "e1", dkim.AlgoEd25519}} {
		_, rec := writeKey(t, dir, k[0]+k[1]+".pem", k[2])
		recs[k[1]+"._domainkey."+k[0]] = rec
	}
	keys := []any{
		map[string]any{"domain": "a.test", "selector": "r1", "key": "a.testr1.pem"},
		map[string]any{"domain": "a.test", "selector": "e1", "key": "a.teste1.pem"},
		map[string]any{"domain": "b.test", "selector": "e1", "key": "b.teste1.pem"},
	}
	mk := func(extra map[string]any) pipeline.Stage {
		o := map[string]any{"keys": keys}
		for k, v := range extra {
			o[k] = v
		}
		st, err := NewSigner("dkim", o)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.(pipeline.Provisioner).Provision(env(dir, recs)); err != nil {
			t.Fatal(err)
		}
		return st
	}
	results := func(msg *pipeline.Message) string {
		var out []string
		for _, a := range Verify(context.Background(), recs, &msg.Header, msg.Body, 5) {
			out = append(out, a.Result+" "+strings.Join(a.Props[:min(2, len(a.Props))], " "))
		}
		return strings.Join(out, "; ")
	}
	st := mk(nil)
	msg, err := signVia(t, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := promtest.ToFloat64(st.(*Signer).signed.WithLabelValues(dkim.AlgoEd25519)); n != 1 {
		t.Errorf("sluice_dkim_signatures_total{algo=ed25519} = %v, want 1", n)
	}
	if got := results(msg); got != "pass header.d=a.test header.s=r1; pass header.d=a.test header.s=e1" {
		t.Errorf("default: %s", got)
	}
	msg, _ = signVia(t, st, map[string]string{ScratchDomain: "b.test"})
	if got := results(msg); got != "pass header.d=b.test header.s=e1" {
		t.Errorf("override: %s", got)
	}
	msg, _ = signVia(t, st, map[string]string{ScratchSelector: "e1"})
	if got := results(msg); got != "pass header.d=a.test header.s=e1" {
		t.Errorf("selector: %s", got)
	}
	if msg, _ = signVia(t, st, map[string]string{ScratchSkip: "yes"}); msg.Header.Has("DKIM-Signature") {
		t.Error("dkim.skip: signed")
	}
	_, err = signVia(t, st, map[string]string{ScratchDomain: "c.test"})
	if rep := pipeline.Reply(err); err == nil || !rep.Temporary() {
		t.Errorf("override without a key: %v, want a temporary failure", err)
	}
	// Mail received as an MX (an unauthenticated client outside
	// relay_networks) is not signed: anyone could otherwise get any From
	// of a.test signed by sending it here. A Lua choice (dkim.domain) or
	// sign_received = true signs it.
	mx := &pipeline.Conn{Source: pipeline.SourceSMTP}
	if msg, err = signViaConn(t, st, mx, nil); err != nil || msg.Header.Has("DKIM-Signature") {
		t.Errorf("received as an MX: %v, signed %v", err, msg.Header.Has("DKIM-Signature"))
	}
	if msg, _ = signViaConn(t, st, mx, map[string]string{ScratchDomain: "b.test"}); results(msg) != "pass header.d=b.test header.s=e1" {
		t.Errorf("received as an MX, dkim.domain set in Lua: %s", results(msg))
	}
	if msg, _ = signViaConn(t, mk(map[string]any{"sign_received": true}), mx, nil); !msg.Header.Has("DKIM-Signature") {
		t.Error("received as an MX with sign_received = true: not signed")
	}
	msg, err = signVia(t, mk(map[string]any{"on_error": "continue"}), map[string]string{ScratchDomain: "c.test"})
	if err != nil || msg.Header.Has("DKIM-Signature") {
		t.Errorf("on_error=continue: %v, signed %v", err, msg.Header.Has("DKIM-Signature"))
	}
	// A message without an empty line after its header goes unsigned,
	// byte for byte, instead of failing for ever.
	ch, _ := pipeline.Compile([]pipeline.Stage{st}, pipeline.ChainOptions{})
	for _, raw := range []string{"From: a@a.test\r\nbody text\r\n", "From: a@a.test\r\nSubject: x\r\n"} {
		msg, _ = pipeline.ParseMessage(&pipeline.Txn{ID: "01T", Conn: submitter()}, []byte(raw))
		if _, _, err := ch.Message(context.Background(), msg); err != nil {
			t.Errorf("%q: %v", raw, err)
		}
		out, _ := msg.Bytes()
		if signedToo := msg.Header.Has("DKIM-Signature"); signedToo != msg.HeaderEnded() {
			t.Errorf("%q: signed %v, header ended %v:\n%s", raw, signedToo, msg.HeaderEnded(), out)
		}
	}
}

// TestVerifyCapAndLengthTag: only max_signatures signatures are looked
// at; one with l= is refused (dkim=policy) without a DNS lookup.
func TestVerifyCapAndLengthTag(t *testing.T) {
	dir := t.TempDir()
	kf, rec := writeKey(t, dir, "e.pem", dkim.AlgoEd25519)
	keys, err := dkim.Load([]dkim.KeySpec{{Domain: "a.test", Selector: "e1", File: filepath.Join(dir, kf)}})
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := pipeline.ParseMessage(&pipeline.Txn{}, []byte(raw))
	for i := 0; i < 4; i++ {
		fields, err := dkim.Sign(keys, &dkim.Options{}, &msg.Header, msg.Body)
		if err != nil {
			t.Fatal(err)
		}
		msg.Header.AddRaw([]byte(fields[0]))
	}
	msg.Header.AddRaw([]byte("DKIM-Signature: v=1; a=ed25519-sha256; d=a.test; s=e1; l=3; h=from; bh=x; b=yyyyyyyyyy\r\n"))
	res := mapResolver{"e1._domainkey.a.test": rec}
	got := Verify(context.Background(), res, &msg.Header, msg.Body, 3)
	if len(got) != 3 || got[0].Result != "policy" {
		t.Fatalf("results %+v", got)
	}
	// Each signature covers the ones below it only if it signed them
	// (it did not: h= lists no DKIM-Signature), so all pass.
	for _, a := range got[1:] {
		if a.Result != "pass" {
			t.Errorf("%+v", a)
		}
	}
	if got := Verify(context.Background(), res, &msg.Header, msg.Body, 50); len(got) != 5 {
		t.Errorf("max 50: %d results", len(got))
	}
	if got := Verify(context.Background(), mapResolver{}, &msg.Header, msg.Body, 2); got[1].Result != "permerror" {
		t.Errorf("no key record: %+v", got[1])
	}
	if got := Verify(context.Background(), failResolver{}, &msg.Header, msg.Body, 2); got[1].Result != "temperror" {
		t.Errorf("DNS failure: %+v", got[1])
	}
	unsigned, _ := pipeline.ParseMessage(&pipeline.Txn{}, []byte(raw))
	if got := Verify(context.Background(), res, &unsigned.Header, unsigned.Body, 2); len(got) != 1 || got[0].Result != "none" {
		t.Errorf("unsigned: %+v", got)
	}
}

// failResolver fails every lookup temporarily (a SERVFAIL).
type failResolver struct{}

func (failResolver) LookupTXT(context.Context, string) ([]string, time.Duration, error) {
	return nil, 0, errors.New("SERVFAIL")
}

// BenchmarkSignStage: the dkim_sign stage's whole sign step for a 2 KB
// message (key choice, From parsing, one Ed25519 signature, prepending),
// to compare with internal/dkim's BenchmarkSignEd25519.
func BenchmarkSignStage(b *testing.B) {
	dir := b.TempDir()
	k, _ := dkim.Generate(dkim.AlgoEd25519)
	p, _ := dkim.MarshalPrivateKey(k)
	os.WriteFile(filepath.Join(dir, "k.pem"), p, 0o600)
	st, err := NewSigner("dkim", map[string]any{"domain": "a.test", "selector": "e1", "key": "k.pem"})
	if err != nil {
		b.Fatal(err)
	}
	if err := st.(pipeline.Provisioner).Provision(env(dir, nil)); err != nil {
		b.Fatal(err)
	}
	body := strings.Repeat("The quick brown fox jumps over the lazy dog, again and again.\r\n", 30)
	raw := []byte("From: A <a@a.test>\r\nTo: b@x.test\r\nSubject: s\r\nDate: Mon, 30 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@a.test>\r\n\r\n" + body)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		msg, _ := pipeline.ParseMessage(&pipeline.Txn{ID: "01T"}, raw)
		if err := st.(*Signer).Sign(context.Background(), msg); err != nil {
			b.Fatal(err)
		}
	}
}
