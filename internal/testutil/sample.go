package testutil

import (
	"runtime/metrics"
	"sync"
	"time"
)

// RuntimeMetric reads one runtime/metrics value of kind uint64 (such as
// "/gc/cycles/forced:gc-cycles"); 0 for a name this Go does not have.
func RuntimeMetric(name string) uint64 {
	s := []metrics.Sample{{Name: name}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

// Sample calls take every interval on a goroutine of its own until the
// returned stop is called, which returns once take is no longer
// running (take is not called again). Call stop once.
func Sample(every time.Duration, take func()) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(every)
		defer tk.Stop()
		for {
			select {
			case <-done:
				return
			case <-tk.C:
				take()
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}
