package plugin

import (
	"bytes"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limits on the plugin output that reaches the relay's log.
const (
	// maxLogLine bounds one logged line of plugin output (bytes); the rest
	// of a longer line is dropped and the record says truncated=true.
	maxLogLine = 4 << 10
	// outputRate and outputBurst bound the lines logged per second for one
	// plugin process (all its streams together); lines past them are
	// dropped and counted in a warning when logging resumes.
	outputRate  = 100
	outputBurst = 500
)

// outputLimiter is shared by the lineLoggers of one plugin process.
type outputLimiter struct {
	mu      sync.Mutex
	lim     *rate.Limiter
	dropped int
}

func newOutputLimiter() *outputLimiter {
	return &outputLimiter{lim: rate.NewLimiter(outputRate, outputBurst)}
}

// allow reports whether a line may be logged now and how many lines were
// dropped since the last one that was.
func (o *outputLimiter) allow(now time.Time) (ok bool, dropped int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.lim.AllowN(now, 1) {
		o.dropped++
		return false, 0
	}
	dropped, o.dropped = o.dropped, 0
	return true, dropped
}

// lineLogger is an io.Writer that logs each line written to it, at most
// maxLogLine bytes of it, within its limiter's rate (nil: no limit). The
// Go runtime's scheduler trace is not logged when sched is on (see
// sysmonAwake).
type lineLogger struct {
	mu     sync.Mutex
	log    *slog.Logger
	stream string
	lim    *outputLimiter
	buf    []byte
	skip   bool // the current line was logged truncated: drop up to its end
	sched  schedFilter
}

func (w *lineLogger) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if w.skip {
			if i < 0 {
				return n, nil
			}
			w.skip = false
			p = p[i+1:]
			continue
		}
		chunk := p
		if i >= 0 {
			chunk = p[:i]
		}
		if room := maxLogLine - len(w.buf); len(chunk) > room {
			w.buf = append(w.buf, chunk[:room]...)
			w.emit(w.buf, true)
			w.buf = w.buf[:0]
			w.skip = i < 0
			if i < 0 {
				return n, nil
			}
			p = p[i+1:]
			continue
		}
		w.buf = append(w.buf, chunk...)
		if i < 0 {
			return n, nil
		}
		w.emit(w.buf, false)
		w.buf = w.buf[:0]
		p = p[i+1:]
	}
	return n, nil
}

func (w *lineLogger) emit(line []byte, truncated bool) {
	line = bytes.TrimRight(line, "\r")
	if len(line) == 0 || w.sched.drop(line) {
		return
	}
	if w.lim != nil {
		ok, dropped := w.lim.allow(time.Now())
		if !ok {
			return
		}
		if dropped > 0 {
			w.log.Warn("plugin output rate limited: lines dropped", "dropped_lines", dropped,
				"limit_per_second", outputRate, "burst", outputBurst)
		}
	}
	if truncated {
		w.log.Info("plugin output", "stream", w.stream, "line", string(line), "truncated", true)
		return
	}
	w.log.Info("plugin output", "stream", w.stream, "line", string(line))
}
