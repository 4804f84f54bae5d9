package queue

// Queue control for operators (docs/operating.md#queue-control): list the
// destination queues, retry waiting recipients now, pause and resume a
// destination. Each admin action records an event naming who did it.
//
// A queue is named as the listing shows it: the site with shaping on (its
// MX routes' queues hold every domain of the site), otherwise the route's
// queue name for the recipient domain (the "queue" of events). Several
// internal destinations (other TLS policy, pool or port) with one name
// are one queue here.
//
// Concurrency: every method takes q.mu; the listing walks the timer heap
// under it (O(waiting items)), which is fine for tens of thousands of
// waiting items and not tuned for millions.

import (
	"container/heap"
	"sort"
	"strconv"
	"time"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// QueueInfo is one queue in List.
type QueueInfo struct {
	Name string `json:"name"`
	// Ready recipients wait for a connection; Waiting recipients wait
	// for their next attempt (backoff, shaping or a full spool).
	Ready   int  `json:"ready"`
	Waiting int  `json:"waiting"`
	Paused  bool `json:"paused"`
	// Oldest is when the oldest queued message was received.
	Oldest time.Time `json:"oldest"`
	// NextAttempt is the earliest due time of a waiting recipient; nil
	// when none waits.
	NextAttempt *time.Time `json:"next_attempt"`
	// LastError is the last reply recorded for a waiting recipient (the
	// one due last, so the most recently deferred), or nil.
	LastError *pipeline.Response `json:"last_error"`
}

// ctlName is the queue name of d in the control API. q.mu held.
func ctlName(d *dest) string {
	if d.site != "" {
		return d.site
	}
	return d.name
}

// paused reports whether d's queue is paused. q.mu held.
func (q *Queue) paused(d *dest) bool {
	return q.pausedSet[ctlName(d)]
}

// Queues lists the queues holding recipients, and paused queues even
// when empty, sorted by name.
func (q *Queue) Queues() []QueueInfo {
	q.mu.Lock()
	defer q.mu.Unlock()
	by := map[string]*QueueInfo{}
	get := func(d *dest) *QueueInfo {
		n := ctlName(d)
		qi := by[n]
		if qi == nil {
			qi = &QueueInfo{Name: n, Paused: q.pausedSet[n]}
			by[n] = qi
		}
		return qi
	}
	oldest := func(qi *QueueInfo, it *item) {
		if r := it.msg.meta.Received; qi.Oldest.IsZero() || r.Before(qi.Oldest) {
			qi.Oldest = r
		}
	}
	for _, d := range q.dests {
		if len(d.ready) == 0 {
			continue
		}
		qi := get(d)
		for _, it := range d.ready {
			qi.Ready += len(it.rcpts)
			oldest(qi, it)
		}
	}
	lastDue := map[string]time.Time{}
	for _, it := range q.waiting {
		qi := get(it.dest)
		qi.Waiting += len(it.rcpts)
		oldest(qi, it)
		if qi.NextAttempt == nil || it.due.Before(*qi.NextAttempt) {
			due := it.due
			qi.NextAttempt = &due
		}
		for _, r := range it.rcpts {
			if r.LastReply != nil && !it.due.Before(lastDue[qi.Name]) {
				lastDue[qi.Name], qi.LastError = it.due, r.LastReply
			}
		}
	}
	for n := range q.pausedSet {
		if by[n] == nil {
			by[n] = &QueueInfo{Name: n, Paused: true}
		}
	}
	out := make([]QueueInfo, 0, len(by))
	for _, qi := range by {
		out = append(out, *qi)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Pause stops delivery attempts to the queue name (workers finish the
// attempt they are making); its recipients stay queued and the spool
// keeps them. A name with nothing queued may be paused: mail queued for
// it later waits too. Pausing is not persisted: a restart resumes every
// queue. by is the API key id recorded in the queue_paused event. It
// reports whether the queue was not paused already; err is a failure to
// record the event (the pause applies anyway).
func (q *Queue) Pause(name, by string) (bool, error) {
	q.mu.Lock()
	if q.pausedSet == nil {
		q.pausedSet = map[string]bool{}
	}
	changed := !q.pausedSet[name]
	q.pausedSet[name] = true
	q.mu.Unlock()
	return changed, q.adminEvent(pipeline.EventQueuePaused, name, "", by, 0)
}

// Resume ends a pause of the queue name and dispatches what is ready.
// It reports whether the queue was paused; by and err as for Pause.
func (q *Queue) Resume(name, by string) (bool, error) {
	q.mu.Lock()
	changed := q.pausedSet[name]
	delete(q.pausedSet, name)
	for _, d := range q.dests {
		if ctlName(d) == name && len(d.ready) > 0 {
			q.dispatch(d)
		}
	}
	q.mu.Unlock()
	return changed, q.adminEvent(pipeline.EventQueueResumed, name, "", by, 0)
}

// RetryQueue makes every waiting recipient of the queue name (every
// queue when name is "", what `postqueue -f` does) ready now, ignoring
// its backoff; a paused queue's recipients become ready but wait for
// Resume. It returns how many recipients it moved; by and err as for
// Pause.
func (q *Queue) RetryQueue(name, by string) (int, error) {
	n := q.retryWhere(func(it *item) bool { return name == "" || ctlName(it.dest) == name })
	return n, q.adminEvent(pipeline.EventQueueRetried, name, "", by, n)
}

// RetryMessage makes the waiting recipients of message id ready now. It
// returns how many it moved and whether the message is queued at all;
// by and err as for Pause.
func (q *Queue) RetryMessage(id, by string) (int, bool, error) {
	q.mu.Lock()
	_, queued := q.msgs[id]
	q.mu.Unlock()
	if !queued {
		return 0, false, nil
	}
	n := q.retryWhere(func(it *item) bool { return it.msg.meta.ID == id })
	return n, true, q.adminEvent(pipeline.EventQueueRetried, "", id, by, n)
}

// retryWhere moves the waiting items matching ok to their queues' ready
// lists and returns the recipients moved.
func (q *Queue) retryWhere(ok func(*item) bool) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	var moved []*item
	kept := q.waiting[:0]
	for _, it := range q.waiting {
		if ok(it) {
			moved = append(moved, it)
		} else {
			kept = append(kept, it)
		}
	}
	if len(moved) == 0 {
		return 0
	}
	for i := len(kept); i < len(q.waiting); i++ {
		q.waiting[i] = nil
	}
	q.waiting = kept
	for i, it := range q.waiting {
		it.index = i
	}
	heap.Init(&q.waiting)
	now := q.o.Now()
	n := 0
	for _, it := range moved {
		n += len(it.rcpts)
		it.due = now
		q.schedule(it, now)
	}
	q.kick()
	return n
}

// adminEvent records an admin action: the queue name, the message id for
// a message, the API key id in metadata.by, and the recipients it moved
// for a retry.
func (q *Queue) adminEvent(typ, name, msgID, by string, n int) error {
	ev := &pipeline.Event{Type: typ, Queue: name, MessageID: msgID, Source: spool.SuppressionAPI,
		Metadata: map[string]string{"by": by}}
	if typ == pipeline.EventQueueRetried {
		ev.Metadata["recipients"] = strconv.Itoa(n)
	}
	b := q.sp.NewBatch()
	b.AddEvent(ev)
	return b.Commit(false)
}
