package queue

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
)

// memSample is one reading of where a process's resident memory is, in
// bytes: rss (VmRSS), goHeld (what the Go runtime holds from the OS and
// has not released: heap, stacks, its own metadata; an upper bound of
// its part of rss), heap (heap objects, live and garbage), goal (the
// collector's heap goal) and the spool's memtables.
type memSample struct {
	rss, goHeld, heap, goal, memtables uint64
}

func (m memSample) String() string {
	return fmt.Sprintf("rss %d MB = go %d MB (heap objects %d, goal %d) + memtables %d MB + other %d MB",
		m.rss>>20, m.goHeld>>20, m.heap>>20, m.goal>>20, m.memtables>>20, (int64(m.rss)-int64(m.goHeld)-int64(m.memtables))>>20)
}

var pageSize = uint64(os.Getpagesize())

func readMem(sp *spool.Spool) memSample {
	var s memSample
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		if f := bytes.Fields(b); len(f) > 1 {
			p, _ := strconv.ParseUint(string(f[1]), 10, 64)
			s.rss = p * pageSize
		}
	}
	s.goHeld = testutil.RuntimeMetric("/memory/classes/total:bytes") - testutil.RuntimeMetric("/memory/classes/heap/released:bytes")
	s.heap, s.goal = testutil.HeapObjects(), testutil.RuntimeMetric("/gc/heap/goal:bytes")
	s.memtables = sp.MemoryUse().Memtables
	return s
}

// sampleMem samples readMem every 5 ms until stop, which returns the
// sample of the highest rss and the highest of each part.
func sampleMem(sp *spool.Spool) (stop func() (atPeak, maxes memSample)) {
	var (
		mu          sync.Mutex
		peak, maxes memSample
	)
	take := func() {
		s := readMem(sp)
		mu.Lock()
		defer mu.Unlock()
		if s.rss > peak.rss {
			peak = s
		}
		maxes = memSample{max(maxes.rss, s.rss), max(maxes.goHeld, s.goHeld), max(maxes.heap, s.heap), max(maxes.goal, s.goal), max(maxes.memtables, s.memtables)}
	}
	take()
	end := testutil.Sample(5*time.Millisecond, take)
	return func() (memSample, memSample) {
		end()
		take()
		return peak, maxes
	}
}
