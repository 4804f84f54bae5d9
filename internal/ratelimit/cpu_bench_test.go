package ratelimit

import (
	"bufio"
	"context"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// cpuMeter reports a benchmark's CPU per operation: this process's
// (user + system, the client side) and the redis-server's (from INFO cpu),
// which on a shared machine are steadier than ns/op.
type cpuMeter struct {
	c              redis.UniversalClient
	self0, server0 time.Duration
}

// quietRedis turns off the test server's fsync per write (testutil runs
// it with appendfsync always), so that a benchmark measures the limiter,
// not the disk.
func quietRedis(b *testing.B, c redis.UniversalClient) {
	if err := c.ConfigSet(context.Background(), "appendonly", "no").Err(); err != nil {
		b.Fatal(err)
	}
}

func startCPU(b *testing.B, c redis.UniversalClient) *cpuMeter {
	m := &cpuMeter{c: c}
	m.self0, m.server0 = selfCPU(), serverCPU(b, c)
	return m
}

func (m *cpuMeter) report(b *testing.B) {
	n := float64(b.N)
	b.ReportMetric(float64(selfCPU()-m.self0)/n/1e3, "client-cpu-µs/op")
	b.ReportMetric(float64(serverCPU(b, m.c)-m.server0)/n/1e3, "redis-cpu-µs/op")
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func serverCPU(b *testing.B, c redis.UniversalClient) time.Duration {
	info, err := c.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total float64
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		if ok && (k == "used_cpu_sys" || k == "used_cpu_user") {
			f, _ := strconv.ParseFloat(v, 64)
			total += f
		}
	}
	return time.Duration(total * 1e9)
}
