package smtpsrc

import (
	"bufio"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/relay"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// message2K is a 2 KB message with 78-character lines.
var message2K = func() string {
	var b strings.Builder
	b.WriteString("From: app@local.test\r\nTo: bob@local.test\r\nSubject: benchmark\r\n\r\n")
	for b.Len() < 2048-80 {
		b.WriteString(strings.Repeat("x", 76) + "\r\n")
	}
	return b.String()
}()

// BenchmarkSessionPipelined sends 2 KB messages over one session as a
// pipelining client does: MAIL, RCPT and DATA in one write, then the data
// and the final dot in another (RFC 2920 makes DATA the last command of a
// group). The Submitter discards. Reports msgs/s.
func BenchmarkSessionPipelined(b *testing.B) {
	benchmarkSession(b, message2K)
}

// BenchmarkSessionPipelined50K is the same with a 50 KB message, where
// go-smtp's byte-at-a-time data reader dominates.
func BenchmarkSessionPipelined50K(b *testing.B) {
	benchmarkSession(b, message50K)
}

// message50K is a 50 KB message with 78-character lines.
var message50K = func() string {
	var sb strings.Builder
	sb.WriteString("Subject: big\r\n\r\n")
	for sb.Len() < 50*1024 {
		sb.WriteString(strings.Repeat("y", 76) + "\r\n")
	}
	return sb.String()
}()

// BenchmarkSessionSpooled is BenchmarkSessionPipelined with the
// production store: every message is committed to a Pebble spool with a
// synced write before its 250 (no delivery queue). One session, so every
// commit is its own fsync: the per-message cost of the acceptance path.
func BenchmarkSessionSpooled(b *testing.B) {
	for _, tc := range []struct {
		name, msg string
	}{{"2K", message2K}, {"50K", message50K}} {
		b.Run(tc.name, func(b *testing.B) {
			sp, err := spool.Open(b.TempDir(), spool.Options{Logger: testLogger()})
			if err != nil {
				b.Fatal(err)
			}
			defer sp.Close()
			runSession(b, &relay.SpoolStore{Spool: sp}, tc.msg)
		})
	}
}

func benchmarkSession(b *testing.B, msg string) {
	runSession(b, &fakeSub{discard: true}, msg)
}

// runSession sends msg b.N times over one pipelining session into a
// server whose relay stores with sub.
func runSession(b *testing.B, sub relay.Store, msg string) {
	ts := startServer(b, testListener(), newChain(b, pipeline.ChainOptions{}), sub)
	c := dialReady(b, ts.addr)
	c.ehlo()
	w := bufio.NewWriterSize(c.conn, 64<<10)
	cmds := "MAIL FROM:<app@local.test>\r\nRCPT TO:<bob@local.test>\r\nDATA\r\n"
	data := msg + ".\r\n"
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		c.conn.SetDeadline(time.Now().Add(10 * time.Second))
		w.WriteString(cmds)
		w.Flush()
		c.expect(250)
		c.expect(250)
		c.expect(354)
		w.WriteString(data)
		w.Flush()
		if r, err := c.read(); err != nil || r.Code != 250 {
			b.Fatal(r, err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
	c.cmd("QUIT", 221)
}

func BenchmarkScanData(b *testing.B) {
	for _, size := range []int{2 << 10, 50 << 10, 1 << 20} {
		data := []byte(strings.Repeat(strings.Repeat("z", 76)+"\r\n", size/78+1))
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for i := 0; i < b.N; i++ {
				if bare, _, _ := scanData(data); bare {
					b.Fatal("bare")
				}
			}
		})
	}
}

// BenchmarkConcurrentLargeMessages sends `conc` 8 MiB messages at once
// (issue 14 item 4; the issue measured 24 MB), with and without SIZE=,
// under a 64 MiB max_inflight_bytes, and reports the peak heap in use and
// how many were refused 452. The Submitter discards.
func BenchmarkConcurrentLargeMessages(b *testing.B) {
	const conc = 16
	const size = 8 << 20
	var sb strings.Builder
	sb.WriteString("Subject: big\r\n\r\n")
	line := strings.Repeat("z", 998) + "\r\n"
	for sb.Len() < size-len(line) {
		sb.WriteString(line)
	}
	msg := sb.String() + ".\r\n"
	for _, withSize := range []bool{false, true} {
		b.Run(fmt.Sprintf("size_param=%v", withSize), func(b *testing.B) {
			l := testListener()
			l.MaxMessageSize = 32 << 20
			l.MaxInflightBytes = 64 << 20
			ts := startServer(b, l, newChain(b, pipeline.ChainOptions{}), &fakeSub{discard: true})
			var peak atomic.Uint64
			stop := make(chan struct{})
			go func() {
				var ms runtime.MemStats
				for {
					select {
					case <-stop:
						return
					case <-time.After(5 * time.Millisecond):
					}
					runtime.ReadMemStats(&ms)
					if ms.HeapInuse > peak.Load() {
						peak.Store(ms.HeapInuse)
					}
				}
			}()
			var refused atomic.Int64
			b.SetBytes(int64(conc * len(msg)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				var wg sync.WaitGroup
				for j := 0; j < conc; j++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						c := dialReady(b, ts.addr)
						c.ehlo()
						from := "MAIL FROM:<a@local.test>"
						if withSize {
							from += fmt.Sprintf(" SIZE=%d", len(msg))
						}
						c.write(from + "\r\nRCPT TO:<bob@local.test>\r\nDATA\r\n")
						c.expect(250)
						c.expect(250)
						c.expect(354)
						c.write(msg)
						r, err := c.read()
						if err != nil {
							b.Error(err)
							return
						}
						if r.Code == 452 {
							refused.Add(1)
						} else if r.Code != 250 {
							b.Errorf("reply %v", r)
						}
						c.conn.Close()
					}()
				}
				wg.Wait()
			}
			b.StopTimer()
			close(stop)
			b.ReportMetric(float64(peak.Load())/(1<<20), "peak-heap-MiB")
			b.ReportMetric(float64(refused.Load())/float64(b.N), "refused/op")
		})
	}
}
