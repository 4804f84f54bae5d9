package spool

import "sync"

// Spool writes run on writer goroutines (see write): a caller waits for
// its write with a timeout, so a write stuck on a failing disk returns to
// its caller. Starting a goroutine per write cost a goroutine's creation
// and the growth of its fresh stack on every write (about 4% of the
// relay's CPU at one SMTP session, where every message makes three
// writes); writers that finish a write now wait for the next one instead,
// up to maxIdleWriters of them.

// maxIdleWriters bounds the writer goroutines kept waiting for a write;
// a writer that finishes when that many already wait ends. More writes
// at once than this (a burst of HTTP requests, say) start goroutines of
// their own as before.
const maxIdleWriters = 64

// writeReq is one write handed to a writer goroutine. done is buffered:
// a writer never blocks on a caller that stopped waiting.
type writeReq struct {
	f    func() error
	done chan error
}

var writeReqs = sync.Pool{New: func() any { return &writeReq{done: make(chan error, 1)} }}

// startWrite runs f on a waiting writer goroutine, or a new one when none
// waits, and returns the request whose done channel gets f's result
// (through writeNow). Give r back with endWrite once its result is read;
// a caller that stops waiting before that must drop r instead.
func (s *Spool) startWrite(f func() error) *writeReq {
	r := writeReqs.Get().(*writeReq)
	r.f = f
	select {
	case s.writeq <- r:
	default:
		go s.writer(r)
	}
	return r
}

// endWrite recycles r, whose result was read.
func endWrite(r *writeReq) {
	r.f = nil
	writeReqs.Put(r)
}

// writer runs r, then waits for more writes until the spool closes or
// enough writers wait already.
func (s *Spool) writer(r *writeReq) {
	for {
		f := r.f
		r.done <- s.writeNow(f) // r belongs to its caller from here
		if s.idleWriters.Add(1) > maxIdleWriters {
			s.idleWriters.Add(-1)
			return
		}
		select {
		case r = <-s.writeq:
			s.idleWriters.Add(-1)
		case <-s.closing:
			s.idleWriters.Add(-1)
			return
		}
	}
}
