package spool

import "github.com/sluice-mta/sluice/pipeline"

// internMax bounds each table of an interner: past it, new values are
// kept as decoded (a spool of a million distinct senders must not grow a
// million-entry table to save nothing).
const internMax = 1 << 16

// interner makes equal values decoded from the spool one value in memory:
// with a million recipients queued for one destination that is down,
// each would otherwise hold its own copy of the same route, last reply,
// domain and sender (about 250 bytes of the queue's index per recipient).
// Not safe for concurrent use; one per scan.
type interner struct {
	strs    map[string]string
	routes  map[pipeline.Route]*pipeline.Route
	replies map[pipeline.Response]*pipeline.Response
	// By their JSON encoding, for ScanQueued (brief.go).
	rawRoutes  map[string]*pipeline.Route
	rawReplies map[string]*pipeline.Response
	rawParams  map[string]pipeline.MailParams
}

func newInterner() *interner {
	return &interner{strs: map[string]string{}, routes: map[pipeline.Route]*pipeline.Route{},
		replies: map[pipeline.Response]*pipeline.Response{}, rawRoutes: map[string]*pipeline.Route{},
		rawReplies: map[string]*pipeline.Response{}, rawParams: map[string]pipeline.MailParams{}}
}

func (in *interner) str(s string) string {
	if v, ok := in.strs[s]; ok {
		return v
	}
	if len(in.strs) < internMax {
		in.strs[s] = s
	}
	return s
}

func (in *interner) meta(m *Meta) {
	m.Source, m.Sender, m.Tenant, m.Identity = in.str(m.Source), in.str(m.Sender), in.str(m.Tenant), in.str(m.Identity)
}

func (in *interner) recipient(r *Recipient) {
	r.Domain = in.str(r.Domain)
	if rt := r.Route; rt != nil {
		if v, ok := in.routes[*rt]; ok {
			r.Route = v
		} else if len(in.routes) < internMax {
			in.routes[*rt] = rt
		}
	}
	if lr := r.LastReply; lr != nil {
		if v, ok := in.replies[*lr]; ok {
			r.LastReply = v
		} else if len(in.replies) < internMax {
			in.replies[*lr] = lr
		}
	}
}
