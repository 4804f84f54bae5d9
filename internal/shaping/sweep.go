package shaping

import "time"

// minPathSweep is the smallest number of paths (site and source pairs)
// at which the Shaper looks for idle ones; after a sweep the next waits
// until the map has doubled, so the cost is amortised O(1) per new path.
const minPathSweep = 1024

// sweepPathsLocked forgets the paths that hold nothing a fresh path from
// the rules would not: no connection (so no Lease points at it), no
// suspension or override running (so no resume timer does), every rate
// limiter full again, and no Threshold match within its period. Such a
// path is rebuilt as it was on its next use. Threshold matches older than
// their period are dropped from the paths kept. s.mu held.
func (s *Shaper) sweepPathsLocked(now time.Time) {
	for k, p := range s.paths {
		p.pruneHits(now)
		if p.idle(now) {
			delete(s.paths, k)
		}
	}
	s.pathSweepAt = max(2*len(s.paths), minPathSweep)
}

// idle reports whether p is in the state a new path would be in.
func (p *path) idle(now time.Time) bool {
	if p.conns > 0 || now.Before(p.suspendedUntil) || len(p.overrides) > 0 || len(p.hits) > 0 {
		return false
	}
	for _, lim := range p.limiters {
		if lim.TokensAt(now) < float64(lim.Burst()) {
			return false
		}
	}
	return true
}

// pruneHits drops the Threshold matches older than their rule's period
// (they can no longer make it fire). s.mu held.
func (p *path) pruneHits(now time.Time) {
	for idx, hits := range p.hits {
		th := p.automation[idx].Threshold
		keep := hits[:0]
		for _, h := range hits {
			if now.Sub(h) <= th.Period {
				keep = append(keep, h)
			}
		}
		if len(keep) == 0 {
			delete(p.hits, idx)
		} else {
			p.hits[idx] = keep
		}
	}
}
