package main

import (
	"context"
	"crypto/sha256"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/internal/loadgen"
	"github.com/sluice-mta/sluice/internal/testutil"
)

const tlsBenchConfig = `
local sluice = require("sluice")
sluice.node { name = "tls-bench-1", hostname = "relay.bench.test" }
sluice.spool { path = "{{SPOOL}}" }
sluice.events { file = "{{EVENTS}}" }
sluice.listen_smtp { addr = "{{SMTP}}", relay_networks = { "127.0.0.0/8" }, max_connections = 2000 }
sluice.delivery {
  resolver = "{{DNS}}",
  port = {{MXPORT}},
  dane = {{DANE}},
  mta_sts = {{STS}},
  max_per_destination = 20,
  max_messages_per_conn = 1000,
}
`

// TestTLSPolicyThroughputAB is the issue 24 performance check, run only
// when SLUICE_TLS_BENCH names a sluice binary built without -race:
//
//	go build -o /tmp/sluice-nr ./cmd/sluice
//	SLUICE_TLS_BENCH=/tmp/sluice-nr go test -count=1 -run TLSPolicyThroughputAB -v ./cmd/sluice
//
// It sends 2 KB messages over 20 SMTP sessions to the relay, which
// delivers them over STARTTLS to one MX destination on loopback, with
// (B) and without (A) DANE and MTA-STS: the DNS server sets the AD bit on
// the MX, address and TLSA (3 1 1) answers, and an HTTPS server on
// 127.0.0.8:443 serves an enforce policy whose certificate the relay
// trusts through SSL_CERT_FILE. Each run starts a fresh relay and sends
// 200 messages first (SLUICE_TLS_BENCH_WARM, 0 for none: cold caches), so the figures are those of warm caches. Runs alternate A B B A (SLUICE_TLS_BENCH_REPS of each, default 3); it logs each
// run's end-to-end rate and the relay's CPU time per message. It asserts
// only that every message arrived, under the policy expected.
func TestTLSPolicyThroughputAB(t *testing.T) {
	bin := os.Getenv("SLUICE_TLS_BENCH")
	if bin == "" {
		t.Skip("set SLUICE_TLS_BENCH to a sluice binary built without -race")
	}
	n, _ := strconv.Atoi(os.Getenv("SLUICE_TLS_BENCH_N"))
	if n == 0 {
		n = 3000
	}
	ca := testutil.NewCA(t, "Bench CA")
	mxCert := ca.Issue(t, "mx.sink.test")
	stsCert := ca.Issue(t, "mta-sts.sink.test")
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Leaf.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	sink := testutil.StartSink(t, testutil.SinkOptions{IP: "127.0.0.1", TLS: mxCert.TLS})

	dns := dnstest.NewServer(t)
	dns.SetTTL(3600)
	dns.SetNegativeTTL(3600)
	dns.AddMX("sink.test", 10, "mx.sink.test")
	dns.AddA("mx.sink.test", "127.0.0.1")
	spki := sha256.Sum256(mxCert.Leaf.RawSubjectPublicKeyInfo)
	dns.AddTLSA("mx.sink.test", sink.Port, 3, 1, 1, spki[:])
	dns.SetSecure(true, "sink.test", "mx.sink.test", "_"+strconv.Itoa(sink.Port)+"._tcp.mx.sink.test")
	dns.AddTXT("_mta-sts.sink.test", "v=STSv1; id=1")
	dns.AddA("mta-sts.sink.test", "127.0.0.8")
	stsLn, err := net.Listen("tcp", "127.0.0.8:443")
	if err != nil {
		t.Skipf("MTA-STS server needs 127.0.0.8:443: %v", err)
	}
	var stsFetches atomic.Int64
	stsSrv := &http.Server{TLSConfig: stsCert.TLS, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		stsFetches.Add(1)
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, "version: STSv1\nmode: enforce\nmx: mx.sink.test\nmax_age: 86400\n")
	})}
	go stsSrv.ServeTLS(stsLn, "", "")
	t.Cleanup(func() { stsSrv.Close() })

	sinkBase := 0 // messages the sink had before this run
	run := func(label string, on bool) (perSec, cpuPerMsg float64) {
		dir := t.TempDir()
		smtpAddr := freePort(t)
		cfg := strings.NewReplacer("{{SPOOL}}", filepath.Join(dir, "spool"), "{{EVENTS}}", filepath.Join(dir, "events.jsonl"),
			"{{SMTP}}", smtpAddr, "{{DNS}}", dns.Addr(), "{{MXPORT}}", strconv.Itoa(sink.Port),
			"{{DANE}}", strconv.FormatBool(on), "{{STS}}", strconv.FormatBool(on)).Replace(tlsBenchConfig)
		path := filepath.Join(dir, "pipeline.lua")
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "serve", "-c", path, "-log-level", "warn")
		cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+caFile)
		var logs strings.Builder
		cmd.Stderr = &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
		}()
		waitFor(t, "relay listening", func() bool {
			c, err := net.Dial("tcp", smtpAddr)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
		// Warm up: the first connections look up and fetch what the
		// policies need (cold caches); the figures are the steady state.
		warm := 200
		if v := os.Getenv("SLUICE_TLS_BENCH_WARM"); v != "" {
			warm, _ = strconv.Atoi(v)
		}
		queries0, fetches0 := dns.Queries(), stsFetches.Load()
		if warm > 0 {
			if _, err := loadgen.RunSMTP(context.Background(), loadgen.SMTPConfig{Target: smtpAddr, N: warm, C: 20, Size: 2048,
				From: "a@bench.test", To: "b@sink.test"}, loadgen.RunConfig{Timeout: time.Minute}); err != nil {
				t.Fatalf("%s: warm-up: %v", label, err)
			}
			testutil.WaitForWithin(t, time.Minute, "warm-up at the sink", func() bool { return len(sink.Messages()) >= sinkBase+warm })
			sinkBase += warm
		}
		before := len(sink.Messages())
		cpu0 := procCPU(t, cmd.Process.Pid)
		start := time.Now()
		rep, err := loadgen.RunSMTP(context.Background(), loadgen.SMTPConfig{Target: smtpAddr, N: n, C: 20, Size: 2048,
			From: "a@bench.test", To: "b@sink.test"}, loadgen.RunConfig{Timeout: 5 * time.Minute})
		if err != nil || rep.Accepted != int64(n) {
			t.Fatalf("%s: loadgen: %v (accepted %d)\n%s", label, err, rep.Accepted, logs.String())
		}
		testutil.WaitForWithin(t, 5*time.Minute, "every message at the sink", func() bool { return len(sink.Messages())-before >= n })
		sinkBase += n
		wall := time.Since(start)
		cpu := procCPU(t, cmd.Process.Pid) - cpu0
		want := `"tls_policy":"opportunistic"`
		if on {
			want = `"tls_policy":"dane","tls_validated":true`
		}
		waitFor(t, fmt.Sprintf("%s: %d delivered events with %s", label, n, want), func() bool {
			evs, _ := os.ReadFile(filepath.Join(dir, "events.jsonl"))
			return strings.Count(string(evs), want) >= n+warm
		})
		perSec, cpuPerMsg = float64(n)/wall.Seconds(), cpu.Seconds()*1e6/float64(n)
		load, _ := os.ReadFile("/proc/loadavg")
		t.Logf("%s: %d × 2 KB, 20 sessions: %.0f msg/s end to end, relay CPU %.0f µs/msg, %d DNS queries, %d policy fetches (load %s)",
			label, n, perSec, cpuPerMsg, dns.Queries()-queries0, stsFetches.Load()-fetches0, strings.Fields(string(load))[0])
		return perSec, cpuPerMsg
	}
	reps, _ := strconv.Atoi(os.Getenv("SLUICE_TLS_BENCH_REPS"))
	if reps == 0 {
		reps = 3
	}
	var a, b, ca1, cb float64
	for i := range 2 * reps {
		// A B B A A B ... (as many of each): drift in the machine's
		// load hits both alike.
		if i%4 == 0 || i%4 == 3 {
			r, c := run("A opportunistic (dane=false, mta_sts=false)", false)
			a, ca1 = a+r, ca1+c
		} else {
			r, c := run("B DANE + MTA-STS enforce", true)
			b, cb = b+r, cb+c
		}
	}
	t.Logf("mean of %d: A %.0f msg/s %.0f µs/msg; B %.0f msg/s %.0f µs/msg; B/A throughput %.3f, CPU %.3f",
		reps, a/float64(reps), ca1/float64(reps), b/float64(reps), cb/float64(reps), b/a, cb/ca1)
}

// procCPU is the user+system CPU time of process pid so far.
func procCPU(t *testing.T, pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}
