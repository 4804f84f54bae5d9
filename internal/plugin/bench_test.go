package plugin

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-mta/sluice/pipeline"
)

// benchMessage is a 2 KB message with a typical header (12 fields).
func benchMessage(b *testing.B) *pipeline.Message {
	b.Helper()
	var h strings.Builder
	h.WriteString("Received: from client.example (client.example [192.0.2.1]) by relay.example with ESMTP id abc; Mon, 30 Nov 2026 08:00:00 +0000\r\n")
	h.WriteString("From: Alice <alice@origin.example>\r\nTo: Bob <bob@dest.example>\r\nSubject: quarterly report\r\n")
	h.WriteString("Date: Mon, 30 Nov 2026 08:00:00 +0000\r\nMessage-ID: <1234@origin.example>\r\nMIME-Version: 1.0\r\n")
	h.WriteString("Content-Type: text/plain; charset=utf-8\r\nX-Mailer: bench\r\nX-A: 1\r\nX-B: 2\r\nX-C: 3\r\n\r\n")
	body := strings.Repeat("lorem ipsum dolor sit amet, consectetur adipiscing elit\r\n", 2048/58)
	txn := &pipeline.Txn{Conn: &pipeline.Conn{ID: "c"}, ID: "m1", Sender: "alice@origin.example"}
	m, err := pipeline.ParseMessage(txn, []byte(h.String()+body))
	if err != nil {
		b.Fatal(err)
	}
	return m
}

// BenchmarkPluginOnMessage: one on_message call of a plugin that inspects
// the header and adds a field (testdata/stamp), through the host's Stage
// with metrics on, as the chain makes it. Reports the p50 and p99 call
// latency in µs besides ns/op; "serial" is one call at a time, "parallel"
// GOMAXPROCS×4 goroutines (a loaded relay). "stream" is the SDK's default
// (the Calls stream of protocol 1.1, the header as one block of protocol
// 1.2), "unary" one RPC per call (sdk.WithoutStreaming, as a protocol 1.0
// plugin), "fields" the stream with the header as one entry per field
// (sdk.WithHeaderFields, as a protocol 1.1 plugin), "goprocs" the default
// served with sdk.WithMaxProcs(0) (Go's GOMAXPROCS, one per core, instead
// of the SDK's 1), "parsed" the default with the header parsed into
// msg.Header for the hook (as for a plugin without sdk.HeaderReader), all
// in the same run; "deepsleep" the default with GODEBUG=schedtrace=0, so
// that the Go runtime's sysmon thread sleeps deeply when the plugin is
// idle, as it did before Sluice set schedtrace for its plugins (see
// sysmonAwake; docs/plugins.md, "CPU of a Go plugin"); "workers" the
// default with each stream call handed to a worker goroutine (the SDK's
// default) instead of run inline (sdk.WithInlineCalls, the stamp plugin's).
// host-cpu-µs/op and plugin-cpu-µs/op are the CPU time of each process
// per call (the host's includes the benchmark's own loop), host-cs/op and
// plugin-cs/op its threads' context switches per call.
func BenchmarkPluginOnMessage(b *testing.B) {
	for _, c := range []struct {
		name string
		env  string // for the plugin: the transport or header form to use
		par  bool
	}{
		{"stream/serial", "", false}, {"unary/serial", "STAMP_UNARY=1", false},
		{"stream/parallel", "", true}, {"unary/parallel", "STAMP_UNARY=1", true},
		{"fields/serial", "STAMP_FIELDS=1", false}, {"fields/parallel", "STAMP_FIELDS=1", true},
		{"goprocs/serial", "STAMP_GOPROCS=1", false}, {"goprocs/parallel", "STAMP_GOPROCS=1", true},
		{"parsed/serial", "STAMP_PARSED=1", false}, {"parsed/parallel", "STAMP_PARSED=1", true},
		{"deepsleep/serial", sysmonDeepSleep, false}, {"deepsleep/parallel", sysmonDeepSleep, true},
		{"workers/serial", "STAMP_WORKERS=1", false}, {"workers/parallel", "STAMP_WORKERS=1", true},
	} {
		par := c.par
		env := []string{"STAMP_CPUPROFILE=" + os.Getenv("STAMP_CPUPROFILE"), c.env}
		b.Run(c.name, func(b *testing.B) {
			m, err := NewMetrics(prometheus.NewRegistry())
			if err != nil {
				b.Fatal(err)
			}
			// Timeout as examples/bench/plugin.sh sets it: the stage's
			// deadline is part of every call's cost.
			s, err := Start(Options{Name: "stamp", Cmd: stampBin, Env: env, Metrics: m, Timeout: 2 * time.Second, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			msg := benchMessage(b)
			ctx := context.Background()
			call := func() time.Duration {
				t0 := time.Now()
				v, err := s.OnMessage(ctx, msg)
				d := time.Since(t0)
				if err != nil || len(v.Edits.Headers) != 1 {
					panic(fmt.Sprintf("OnMessage: %v %+v", err, v))
				}
				return d
			}
			for range 200 { // warm up the connection
				call()
			}
			var mu sync.Mutex
			lat := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			h0, p0 := cpuTime(b, 0), cpuTime(b, s.PID())
			hs0, ps0 := switches(b, 0), switches(b, s.PID())
			b.ResetTimer()
			if par {
				b.SetParallelism(4)
				b.RunParallel(func(pb *testing.PB) {
					var mine []time.Duration
					for pb.Next() {
						mine = append(mine, call())
					}
					mu.Lock()
					lat = append(lat, mine...)
					mu.Unlock()
				})
			} else {
				for range b.N {
					lat = append(lat, call())
				}
			}
			b.StopTimer()
			// CPU per call on each side: on 2 busy cores, CPU is what a
			// call takes off the relay's throughput.
			b.ReportMetric(float64((cpuTime(b, 0)-h0).Microseconds())/float64(b.N), "host-cpu-µs/op")
			b.ReportMetric(float64((cpuTime(b, s.PID())-p0).Microseconds())/float64(b.N), "plugin-cpu-µs/op")
			// Context switches per call: each is a thread that slept and
			// was woken (or was preempted), the cost a process boundary
			// adds besides the bytes.
			b.ReportMetric(float64(switches(b, 0)-hs0)/float64(b.N), "host-cs/op")
			b.ReportMetric(float64(switches(b, s.PID())-ps0)/float64(b.N), "plugin-cs/op")
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}

// sysmonDeepSleep lets the plugin runtime's sysmon thread sleep deeply
// (no schedtrace: Sluice's withSysmonAwake then leaves GODEBUG alone).
const sysmonDeepSleep = "GODEBUG=schedtrace=0"

// procDir is the /proc directory of process pid (0: this process).
func procDir(pid int) string {
	if pid == 0 {
		return "/proc/self"
	}
	return "/proc/" + strconv.Itoa(pid)
}

// cpuTime is the user+system CPU time of process pid (0: this process)
// from /proc (Linux; the benchmark skips elsewhere).
func cpuTime(b *testing.B, pid int) time.Duration {
	b.Helper()
	data, err := os.ReadFile(procDir(pid) + "/stat")
	if err != nil {
		b.Skipf("no /proc: %v", err)
	}
	// Fields after the command name (which may hold spaces) in ")":
	// utime and stime are fields 14 and 15 of the line, 12 and 13 here.
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / clockTicks
}

// switches is the number of context switches, voluntary and not, of all
// the threads of process pid (0: this process) from /proc (Linux).
func switches(b *testing.B, pid int) int64 {
	b.Helper()
	tasks, err := os.ReadDir(procDir(pid) + "/task")
	if err != nil {
		b.Skipf("no /proc: %v", err)
	}
	var n int64
	for _, t := range tasks {
		data, err := os.ReadFile(procDir(pid) + "/task/" + t.Name() + "/status")
		if err != nil {
			continue // the thread exited
		}
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.HasSuffix(k, "ctxt_switches") {
				c, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				n += c
			}
		}
	}
	return n
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times: 100 on
// every Linux architecture Go supports.
const clockTicks = 100
