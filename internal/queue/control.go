package queue

// Queue control for operators (docs/operating.md#queue-control): list the
// destination queues; retry waiting recipients now; bounce (with a DSN)
// or cancel (silently) queued recipients; hold them (no attempt until
// released) and release them; pause and resume a destination. Actions
// apply to one message or to every recipient matching a filter
// (Target). Each records events naming who did it.
//
// A queue is named as the listing shows it: the site with shaping on (its
// MX routes' queues hold every domain of the site), otherwise the route's
// queue name for the recipient domain (the "queue" of events). Several
// internal destinations (other TLS policy, pool or port) with one name
// are one queue here. A filter's Queue matches either name.
//
// Durability: a pause is recorded in the spool (spool.Batch.SetPaused)
// and a hold in the recipient's record (spool.Recipient.Held), each in
// the batch of its event, so both survive a restart.
//
// Concurrency: every method takes q.mu; the listing and the actions walk
// the timer heap, the ready lists and the held items under it (O(queued
// items): about 0.1 s per million), during which no delivery is
// scheduled. An action on many recipients works in steps of about
// StepRecipients (steps.go), each taking q.mu for its own walk, so
// deliveries go on between steps; it acts on the recipients of the
// messages queued when it began. Waiting items are compact (queue.go,
// item): an action whose
// filter names the sender, tenant or a recipient field first reads the
// candidates back from the spool without q.mu (extract; a point read per
// message, a few microseconds each). A recipient a worker is delivering
// at that moment (or whose shaping site is being looked up) is not in
// those lists: an action does not touch it (repeat the action once its
// attempt ended).

import (
	"errors"
	"maps"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// QueueInfo is one queue in List.
type QueueInfo struct {
	Name string `json:"name"`
	// Ready recipients wait for a connection; Waiting recipients wait
	// for their next attempt (backoff, shaping or a full spool).
	Ready   int `json:"ready"`
	Waiting int `json:"waiting"`
	// Held recipients wait for an operator's release.
	Held   int  `json:"held"`
	Paused bool `json:"paused"`
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
	oldest := func(qi *QueueInfo, msg msgRef) {
		if r := timeOf(q.received(msg)); qi.Oldest.IsZero() || r.Before(qi.Oldest) {
			qi.Oldest = r
		}
	}
	for _, d := range q.dests {
		if readyLen(d) == 0 {
			continue
		}
		qi := get(d)
		for _, it := range d.ready {
			qi.Ready += it.count()
			oldest(qi, it.msg)
		}
		for i := range d.back {
			qi.Ready += q.recCount(&d.back[i])
			oldest(qi, d.back[i].msg)
		}
	}
	lastDue := map[string]int64{}
	for i := range q.waiting {
		r := &q.waiting[i]
		d := q.destTab.at(r.dest)
		qi := get(d)
		qi.Waiting += q.recCount(r)
		oldest(qi, r.msg)
		if qi.NextAttempt == nil || r.due < nanos(*qi.NextAttempt) {
			due := timeOf(r.due)
			qi.NextAttempt = &due
		}
		// A waiting item is compact: its destination's last reply stands
		// for its recipients' (they share it when equal, dest.share).
		if lr := d.lastReply; lr != nil && r.due >= lastDue[qi.Name] {
			lastDue[qi.Name], qi.LastError = r.due, lr
		}
	}
	for i := range q.held {
		r := &q.held[i]
		qi := get(q.destTab.at(r.dest))
		qi.Held += q.recCount(r)
		oldest(qi, r.msg)
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

// Target selects the recipients a control action applies to: those of
// message MessageID (when set) that match Filter. Filter.Queue matches
// the queue's control name (a site with shaping) or the recipient's
// route queue name; Filter.Cursor and Filter.Limit are ignored. The zero
// Target selects every queued recipient.
type Target struct {
	MessageID string
	Filter    spool.ListFilter
}

// ErrNotQueued is returned for a Target naming a message that has no
// recipient queued on this node.
var ErrNotQueued = errors.New("queue: message not queued on this node")

// The replies recorded for an operator's bounce (the DSN's diagnostic,
// RFC 3464 section 2.3.6) and cancel. complete tells them from delivery
// errors by identity.
var (
	errAdminBounce = &pipeline.Error{Code: 550, Enhanced: pipeline.EnhancedCode{5, 0, 0}, Message: "Returned to the sender by the mail administrator"}
	errCancelled   = &pipeline.Error{Code: 550, Enhanced: pipeline.EnhancedCode{5, 0, 0}, Message: "Cancelled by the mail administrator"}
)

// AdminByKey is the metadata key naming the operator (API key id) on the
// bounced and cancelled events of an admin action; the queue_* events
// name it in metadata.by.
const AdminByKey = "admin_by"

// withAdmin is a copy of a message's metadata naming the operator.
func withAdmin(meta map[string]string, by string) map[string]string {
	out := make(map[string]string, len(meta)+1)
	maps.Copy(out, meta)
	out[AdminByKey] = by
	return out
}

// Pause stops delivery attempts to the queue name (workers finish the
// attempt they are making); its recipients stay queued and the spool
// keeps them. A name with nothing queued may be paused: mail queued for
// it later waits too. The pause is recorded in the spool with its
// queue_paused event (metadata.by: by, the API key id), so it outlasts a
// restart. It reports whether the queue was not paused already; err is
// a failure to record it (the pause applies anyway, until a restart).
func (q *Queue) Pause(name, by string) (bool, error) {
	q.mu.Lock()
	if q.pausedSet == nil {
		q.pausedSet = map[string]bool{}
	}
	changed := !q.pausedSet[name]
	q.pausedSet[name] = true
	q.mu.Unlock()
	b := q.sp.NewBatch()
	b.SetPaused(name, true)
	q.adminEvent(b, pipeline.EventQueuePaused, Target{Filter: spool.ListFilter{Queue: name}}, by, -1)
	return changed, b.Commit(false)
}

// Resume ends a pause of the queue name and dispatches what is ready.
// It reports whether the queue was paused; by and err as for Pause.
func (q *Queue) Resume(name, by string) (bool, error) {
	q.mu.Lock()
	changed := q.pausedSet[name]
	delete(q.pausedSet, name)
	for _, d := range q.dests {
		if ctlName(d) == name && readyLen(d) > 0 {
			q.dispatch(d)
		}
	}
	q.mu.Unlock()
	b := q.sp.NewBatch()
	b.SetPaused(name, false)
	q.adminEvent(b, pipeline.EventQueueResumed, Target{Filter: spool.ListFilter{Queue: name}}, by, -1)
	return changed, b.Commit(false)
}

// loadPaused reads the paused queues from the spool (Load).
func (q *Queue) loadPaused() error {
	names, err := q.sp.PausedQueues()
	if err != nil {
		return err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, n := range names {
		if q.pausedSet == nil {
			q.pausedSet = map[string]bool{}
		}
		q.pausedSet[n] = true
	}
	return nil
}

// RetryQueue makes every waiting recipient of the queue name (every
// queue when name is "", what `postqueue -f` does) ready now; see Retry.
func (q *Queue) RetryQueue(name, by string) (int, error) {
	return q.Retry(Target{Filter: spool.ListFilter{Queue: name}}, by)
}

// Retry makes the waiting (deferred) recipients selected by t ready now,
// ignoring their backoff; a paused queue's recipients become ready but
// wait for Resume, and held recipients stay held. It returns how many
// recipients it moved; it records a queue_retried event naming by (the
// API key id); err is ErrNotQueued, or a failure to record the event
// (the retry applies anyway).
func (q *Queue) Retry(t Target, by string) (int, error) {
	if err := q.checkTarget(t); err != nil {
		return 0, err
	}
	n := 0
	_, _ = q.inSteps(fromWaiting, t, func(moved []*item, _ bool) error {
		q.mu.Lock()
		now := q.o.Now()
		for _, it := range moved {
			n += it.count()
			it.due = now.UnixNano()
			q.schedule(it, now)
		}
		q.mu.Unlock()
		q.kick()
		return nil
	})
	b := q.sp.NewBatch()
	q.adminEvent(b, pipeline.EventQueueRetried, t, by, n)
	return n, b.Commit(false)
}

// Bounce returns the queued recipients selected by t (waiting, ready or
// held) to their senders: each gets a bounced event (bounce_class
// PolicyRelated, metadata.admin_by = by) and the sender the DSN a
// permanent failure gets (550 5.0.0, through the same Notifier or
// Bouncer), unless the sender is null; the addresses do not join the
// suppression list. Each message's outcome is committed on its own, a
// step of about StepRecipients recipients at a time (see
// IncompleteError). One queue_bounced event names the action, with the
// recipients bounced. It returns how many recipients it bounced; err is
// ErrNotQueued; an *IncompleteError when an outcome could not be
// recorded (the action stops there: that message and the rest stay
// queued as they were); or the first recipient that could not be read
// back from the spool, or a failure to record the event (the rest was
// bounced).
func (q *Queue) Bounce(t Target, by string) (int, error) {
	return q.settle(t, by, errAdminBounce, pipeline.EventQueueBounced)
}

// Cancel drops the queued recipients selected by t without a DSN: each
// gets a cancelled event (metadata.admin_by = by), then one
// queue_cancelled event names the action. Results as for Bounce.
func (q *Queue) Cancel(t Target, by string) (int, error) {
	return q.settle(t, by, errCancelled, pipeline.EventQueueCancelled)
}

func (q *Queue) settle(t Target, by string, why error, typ string) (int, error) {
	if err := q.checkTarget(t); err != nil {
		return 0, err
	}
	n := 0
	var unread error // the first item that could not be read back
	stepDone := 0    // recipients settled in the step under way
	left, err := q.inSteps(fromWaiting|fromReady|fromHeld, t, func(items []*item, _ bool) error {
		stepDone = 0
		errs := q.hydrateMany(items)
		for i, it := range items {
			if errs != nil && errs[i] != nil {
				err := errs[i]
				q.unreadable(it, err)
				if unread == nil {
					unread = err
				}
				continue
			}
			it.by = by
			if err := q.complete(it, nil, why, nil); err != nil {
				it.by = ""
				q.putBack(items[i:])
				return err
			}
			n += len(it.rcpts)
			stepDone += len(it.rcpts)
		}
		return nil
	})
	if err != nil {
		// The messages of the stopped step before the refused one are
		// settled: not left.
		ie := &IncompleteError{Done: n, Left: max(left-stepDone, 0), Err: err}
		ie.EventErr = q.stoppedEvent(typ, t, by, n, ie)
		return n, ie
	}
	b := q.sp.NewBatch()
	q.adminEvent(b, typ, t, by, n)
	cerr := b.Commit(false)
	if unread != nil {
		return n, unread
	}
	return n, cerr
}

// Hold holds the waiting and ready recipients selected by t: the queue
// makes no attempt for them until Release, whatever their backoff or a
// retry; they still expire at the queue lifetime only once released
// (their next attempt decides). The hold is written into each
// recipient's spool record, so it survives a restart, in steps of about
// StepRecipients recipients (whole messages), each step one spool batch
// committed before the next is read: a step is held entirely or not at
// all, and the queue's index always agrees with the spool. The last
// step's batch holds the queue_held event naming by, with the
// recipients held. It returns how many recipients it held; err is
// ErrNotQueued, or an *IncompleteError when a step could not be
// recorded or read back (the action stops there: the steps before it
// stay held, recorded by a queue_held event of what they held when the
// spool takes it, that step and the rest are as they were; Done 0 when
// nothing was held). Recipients missing from the spool are dropped from
// the queue with a log line, as Bounce does, not a reason to stop.
func (q *Queue) Hold(t Target, by string) (int, error) {
	return q.setHeld(t, by, true)
}

// Release ends the hold of the held recipients selected by t: each goes
// back to its queue, due at its next attempt as it was before the hold
// (now if that is past; Retry makes it now). One queue_released event.
// Results as for Hold.
func (q *Queue) Release(t Target, by string) (int, error) {
	return q.setHeld(t, by, false)
}

func (q *Queue) setHeld(t Target, by string, hold bool) (int, error) {
	if err := q.checkTarget(t); err != nil {
		return 0, err
	}
	from, typ := fromHeld, pipeline.EventQueueReleased
	if hold {
		from, typ = fromWaiting|fromReady, pipeline.EventQueueHeld
	}
	n, recorded, unread := 0, false, false
	left, err := q.inSteps(from, t, func(items []*item, last bool) error {
		if len(items) == 0 && !last {
			return nil
		}
		b := q.sp.NewBatch()
		if errs := q.hydrateMany(items); errs != nil {
			// Recipients gone from the spool are dropped (unreadable),
			// as settle does: a held one is never attempted, so nothing
			// else would. Any other read error puts the step back as it
			// was: none of it is held.
			var rerr error
			kept := make([]*item, 0, len(items))
			for i, it := range items {
				if errors.Is(errs[i], spool.ErrNotQueued) {
					q.unreadable(it, errs[i])
					continue
				}
				if rerr == nil {
					rerr = errs[i]
				}
				kept = append(kept, it)
			}
			if rerr != nil {
				b.Discard()
				q.putBack(kept)
				unread = true
				return rerr
			}
			items = kept
		}
		// The step's records are the items' own (read back for it, or
		// taken out of the queue with them): changed in place, and
		// changed back if the spool refuses the step.
		k := 0
		for _, it := range items {
			for _, r := range it.rcpts {
				r.Held = hold
				_ = b.PutRecipient(r)
			}
			k += len(it.rcpts)
		}
		if last {
			q.adminEvent(b, typ, t, by, n+k)
		}
		err := b.Commit(false)
		now := q.o.Now()
		q.mu.Lock()
		for _, it := range items {
			if err == nil {
				it.held = hold
			} else {
				for _, r := range it.rcpts {
					r.Held = !hold
				}
			}
			q.place(it, now)
		}
		q.mu.Unlock()
		if err != nil {
			return err
		}
		n += k
		recorded = last
		return nil
	})
	if err == nil && recorded {
		return n, nil
	}
	if err == nil {
		// Nothing selected: the event alone.
		b := q.sp.NewBatch()
		q.adminEvent(b, typ, t, by, n)
		return n, b.Commit(false)
	}
	ie := &IncompleteError{Done: n, Left: left, Err: err, Unread: unread}
	if n > 0 {
		// Stopped part way: the event of what was done.
		ie.EventErr = q.stoppedEvent(typ, t, by, n, ie)
	}
	return n, ie
}

// putBack places items again as they were, taken out of the queue by an
// action that does not apply to them. Call it without q.mu.
func (q *Queue) putBack(items []*item) {
	now := q.o.Now()
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, it := range items {
		q.place(it, now)
	}
}

// checkTarget returns ErrNotQueued for a message id the queue does not
// hold.
func (q *Queue) checkTarget(t Target) error {
	if t.MessageID == "" {
		return nil
	}
	q.mu.Lock()
	_, ok := q.msgs.lookup(t.MessageID)
	q.mu.Unlock()
	if !ok {
		return ErrNotQueued
	}
	return nil
}

// place puts an item back: held recipients (an item holds only held
// recipients or none) among the held items, others scheduled. q.mu held.
func (q *Queue) place(it *item, now time.Time) {
	if it.held {
		q.held = append(q.held, q.park(it))
		return
	}
	q.schedule(it, now)
}

// Where extract looks for recipients.
const (
	fromWaiting = 1 << iota // the timer heap
	fromReady               // the destinations' ready lists
	fromHeld                // the held items
)

// extract takes the recipients selected by t (of the messages in sp,
// see span) out of the places in from and returns them as items (one
// per item they were in, with its message, destination and due time);
// what did not match stays where it was. It takes q.mu (call it
// without).
//
// Sender, tenant and the recipient fields are in the spool, not in a
// compact item: when t filters on them, the compact candidates are read
// back first without q.mu (readBack), so that deliveries and Enqueue do
// not wait for those reads; an item that changed meanwhile is read again
// under q.mu. A message id, a queue's own name and the reception time
// need no read.
func (q *Queue) extract(from int, t Target, sp span) []*item {
	var pre map[rbKey]readBack
	if needsRead(t) {
		pre = q.readBack(from, t, sp)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.extractLocked(from, t, sp, pre)
}

// needsRead reports whether t filters on what only the spool holds.
func needsRead(t Target) bool {
	f := t.Filter
	return f.Sender != nil || f.Tenant != nil || f.State != "" || f.RcptDomain != "" || f.Recipient != ""
}

// readBack is a compact item's recipients as read by Queue.readBack:
// ld nil when none matched; ref is the item's idxRef when read.
type readBack struct {
	ref idxRef
	ld  *loaded
}

// rbKey names a compact item for readBack: its message and recipient
// indexes (a recipient is in one item at a time).
type rbKey struct {
	msg msgRef
	ref idxRef
}

// matcher is a Target with its message id looked up, for preMatch,
// limited to the messages of a span.
type matcher struct {
	t    Target
	sp   span
	gen  uint32 // the last message's generation when made (span.has)
	want msgRef // t.MessageID's message, when t names one
	none bool   // t names a message that is not queued
}

// matcher resolves t, limited to sp. q.mu held.
func (q *Queue) matcher(t Target, sp span) *matcher {
	m := &matcher{t: t, sp: sp, gen: q.msgs.gen}
	if t.MessageID != "" {
		var found bool
		m.want, found = q.msgs.lookup(t.MessageID)
		m.none = !found
	}
	return m
}

// preMatch is the part of mt's match that a compact item answers (msg,
// its message; d, its destination): its message id, reception time and
// (site) whether its queue's control name is the target's queue. q.mu
// held.
func (q *Queue) preMatch(mt *matcher, msg msgRef, d *dest) (ok, site bool) {
	f := &mt.t.Filter
	if !mt.sp.has(msg, mt.gen) || mt.none || mt.t.MessageID != "" && mt.want != msg {
		return false, false
	}
	if recv := timeOf(q.received(msg)); !f.After.IsZero() && recv.Before(f.After) || !f.Before.IsZero() && !recv.Before(f.Before) {
		return false, false
	}
	return true, f.Queue == "" || ctlName(d) == f.Queue
}

// matching splits rcpts into those t selects and the others; site as
// from preMatch, m the message's metadata.
func matching(t Target, site bool, m *spool.Meta, rcpts []*spool.Recipient) (took, kept []*spool.Recipient) {
	f := t.Filter
	queue := f.Queue
	f.Queue = ""
	if (f.Sender != nil || f.Tenant != nil) && !f.MatchMeta(m) {
		return nil, rcpts
	}
	for _, r := range rcpts {
		if (site || rcptQueue(r) == queue) && f.MatchRecipient(r) {
			took = append(took, r)
		} else {
			kept = append(kept, r)
		}
	}
	return took, kept
}

// readBack reads the compact items in from that t may select (of the
// messages in sp) back from the spool, without q.mu, and matches them;
// it keeps the recipients of those with a match only.
func (q *Queue) readBack(from int, t Target, sp span) map[rbKey]readBack {
	type cand struct {
		it   *item
		ref  idxRef
		idxs []uint16
		site bool
	}
	var cands []cand
	q.mu.Lock()
	q.walk(from, q.matcher(t, sp), func(it *item, r *waitRec, site bool) {
		if r != nil {
			it = q.view(r)
		}
		if it.loaded == nil {
			cands = append(cands, cand{it, it.ref(), it.indexes(), site})
		}
	})
	q.mu.Unlock()
	// In the spool's key order, read in one pass (spool.QueuedMany).
	slices.SortFunc(cands, func(a, b cand) int { return strings.Compare(a.it.id, b.it.id) })
	ids, idxs := make([]string, len(cands)), make([][]uint16, len(cands))
	for i, c := range cands {
		ids[i], idxs[i] = c.it.id, c.idxs
	}
	pre := make(map[rbKey]readBack, len(cands))
	_ = q.sp.QueuedMany(ids, idxs, func(i int, m *spool.Meta, rs []*spool.Recipient, err error) {
		if err != nil {
			return // read again (and logged) under q.mu
		}
		c := cands[i]
		rb := readBack{ref: c.ref}
		if took, _ := matching(t, c.site, m, rs); len(took) > 0 {
			rb.ld = &loaded{meta: m, rcpts: rs}
		}
		pre[rbKey{c.it.msg, c.ref}] = rb
	})
	return pre
}

// walk calls fn for every item (it; r nil) and every record (r; it
// nil) in the places in from that mt may select (preMatch; site as it
// says). fn must not change the lists. q.mu held.
func (q *Queue) walk(from int, mt *matcher, fn func(it *item, r *waitRec, site bool)) {
	each := func(it *item) {
		if ok, site := q.preMatch(mt, it.msg, it.dest); ok {
			fn(it, nil, site)
		}
	}
	recs := func(rs []waitRec) {
		for i := range rs {
			r := &rs[i]
			if ok, site := q.preMatch(mt, r.msg, q.destTab.at(r.dest)); ok {
				fn(nil, r, site)
			}
		}
	}
	if from&fromWaiting != 0 {
		recs(q.waiting)
	}
	if from&fromReady != 0 {
		for _, d := range q.dests {
			for _, it := range d.ready {
				each(it)
			}
			recs(d.back)
		}
	}
	if from&fromHeld != 0 {
		recs(q.held)
	}
}

// extractLocked is extract with q.mu held and the compact items read
// back (pre; nil when t needs no read).
func (q *Queue) extractLocked(from int, t Target, sp span, pre map[rbKey]readBack) []*item {
	read := needsRead(t)
	mt := q.matcher(t, sp)
	var out []*item
	// split moves it's matching recipients into a new item in out.
	split := func(it *item) {
		ok, site := q.preMatch(mt, it.msg, it.dest)
		if !ok {
			return
		}
		if it.loaded == nil && site && !read {
			moved := &item{msg: it.msg, id: it.id, dest: it.dest, due: it.due, held: it.held}
			moved.setRef(it.ref())
			it.setRef(idxRef{})
			out = append(out, moved)
			return
		}
		if it.loaded == nil {
			if rb, ok := pre[rbKey{it.msg, it.ref()}]; ok && rb.ref == it.ref() {
				if rb.ld == nil {
					return // read back: no match
				}
				it.load(rb.ld)
			} else if err := q.hydrate(it); err != nil {
				q.log.Warn("queue control: cannot read queued recipients from the spool; left as they are", "msgid", it.id, "err", err)
				return
			}
			defer it.compact()
		}
		took, kept := matching(t, site, it.meta, it.rcpts)
		if len(took) == 0 {
			return
		}
		it.rcpts = kept
		out = append(out, &item{msg: it.msg, id: it.id, dest: it.dest, loaded: &loaded{meta: it.meta, rcpts: took}, due: it.due, held: it.held})
	}
	// A record t may select leaves its list as an item, and what split
	// leaves of it goes back as a record.
	recs := func(rs []waitRec, held bool) []waitRec {
		kept := rs[:0]
		for _, r := range rs {
			if ok, _ := q.preMatch(mt, r.msg, q.destTab.at(r.dest)); !ok {
				kept = append(kept, r)
				continue
			}
			it := q.unpark(r)
			it.held = held
			split(it)
			if it.count() > 0 {
				kept = append(kept, q.park(it))
			}
		}
		clear(rs[len(kept):])
		return shrunk(kept)
	}
	if from&fromWaiting != 0 {
		n := len(q.waiting)
		q.waiting = recs(q.waiting, false)
		// Records kept in place keep their due times: the heap needs
		// restoring only when some left it (each step of a large
		// action passes here once).
		if len(q.waiting) < n {
			q.waiting.init()
		}
	}
	if from&fromReady != 0 {
		for _, d := range q.dests {
			n := len(out)
			for _, it := range d.ready {
				split(it)
			}
			if len(out) > n {
				d.ready = nonEmpty(d.ready)
			}
			d.back = recs(d.back, false)
		}
	}
	if from&fromHeld != 0 {
		q.held = recs(q.held, true)
	}
	return out
}

// nonEmpty drops the items left without recipients from items, in
// place, keeping the order.
func nonEmpty(items []*item) []*item {
	return slices.DeleteFunc(items, func(it *item) bool { return it.count() == 0 })
}

// adminEvent adds to b the event of an admin action: the target's queue
// and message id, the API key id in metadata.by, the filter (as query
// parameters, docs/http-api.md) in metadata.filter when it has more than
// a queue, and the recipients acted on when n >= 0.
func (q *Queue) adminEvent(b *spool.Batch, typ string, t Target, by string, n int) {
	ev := &pipeline.Event{Type: typ, Queue: t.Filter.Queue, MessageID: t.MessageID, Source: spool.SuppressionAPI,
		Metadata: map[string]string{"by": by}}
	if n >= 0 {
		ev.Metadata["recipients"] = strconv.Itoa(n)
	}
	if s := FilterString(t.Filter); s != "" {
		ev.Metadata["filter"] = s
	}
	b.AddEvent(ev)
}

// FilterString is f's fields other than Queue, Cursor and Limit as URL
// query parameters (those of GET /v1/admin/messages), "" when none is
// set.
func FilterString(f spool.ListFilter) string {
	v := url.Values{}
	if f.Sender != nil {
		s := *f.Sender
		if s == "" {
			s = "<>"
		}
		v.Set("sender", s)
	}
	if f.Tenant != nil {
		v.Set("tenant", *f.Tenant)
	}
	for k, s := range map[string]string{"state": f.State, "rcpt_domain": f.RcptDomain, "rcpt": f.Recipient} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if !f.After.IsZero() {
		v.Set("after", f.After.UTC().Format(time.RFC3339Nano))
	}
	if !f.Before.IsZero() {
		v.Set("before", f.Before.UTC().Format(time.RFC3339Nano))
	}
	return v.Encode()
}
