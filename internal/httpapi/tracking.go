package httpapi

import "net/http"

// TrackingHost serves the engagement tracking endpoints of tracking
// hosts (internal/tracking.Tracker): Owns says whether a request's Host
// is one.
type TrackingHost interface {
	http.Handler
	Owns(r *http.Request) bool
}

type trackingHolder struct{ h TrackingHost }

// UseTracking routes requests addressed to a tracking host (by their
// Host header: each tenant's tracking host name is a CNAME to this
// listener) to h, and only to h: the API is not served on those names.
// nil stops it. Safe to call while serving.
func (s *Server) UseTracking(h TrackingHost) {
	if h == nil {
		s.tracking.Store(nil)
		return
	}
	s.tracking.Store(&trackingHolder{h})
}

// serveTracking hands r to the tracking host it is addressed to, if any.
func (s *Server) serveTracking(w http.ResponseWriter, r *http.Request) bool {
	th := s.tracking.Load()
	if th == nil || !th.h.Owns(r) {
		return false
	}
	th.h.ServeHTTP(w, r)
	return true
}
