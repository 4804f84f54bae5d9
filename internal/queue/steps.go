package queue

// Queue-wide control actions in steps (issue 21): a hold, release,
// bounce, cancel or retry of a million recipients takes them out of the
// queue, reads them back from the spool and records the change a step
// at a time, so that its memory is bounded by a step, not by the queue.
// Holding 1,010,000 recipients in one spool batch peaked at 3.1 GB
// resident (every record read back and copied, and Pebble keeping the
// whole batch in memory until flushed).
//
// A step is the recipients of a range of message slots (msgSlab): the
// action counts the candidates per slot once (plan, one walk of the
// index under q.mu, 4 bytes per slot), cuts the slots into ranges of
// about StepRecipients candidates, then takes each range out of the
// queue in turn (extract, which walks the index again but matches a
// record of another range by two integer comparisons). A message is in
// one step whole; a step never meets a recipient twice, since the slot
// of a queued message does not change; a message queued after the
// action began is in no step (its generation is newer), even in a slot
// freed and reused since.

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/sluice-mta/sluice/internal/spool"
)

// StepRecipients is about how many recipients a queue-wide control
// action (Hold, Release, Bounce, Cancel, Retry) takes out of the queue
// and records at a time: a step holds whole messages, and ends with the
// message that brings it to StepRecipients or more. At about 2-4 KB
// allocated per recipient while a step is in hand (read back, copied,
// in the spool's batch) a step costs some 20-40 MB.
const StepRecipients = 10_000

// span limits a step to the messages in msgSlab slots [lo, hi) queued
// when the action began (a generation not newer than gen); the zero
// span limits nothing.
type span struct {
	lo, hi, gen uint32
	on          bool
}

// has reports whether msg is in s, cur being the generation of the
// last message added (msgSlab.gen) now. A message added since the span
// was cut is one of the cur-s.gen newest, however old the others are:
// a generation distance, not an order, since the counter wraps (a
// message can stay queued, held, while 2^31 others come and go).
func (s span) has(msg msgRef, cur uint32) bool {
	if !s.on {
		return true
	}
	newer := msg.gen-s.gen != 0 && msg.gen-s.gen <= cur-s.gen
	return msg.slot >= s.lo && msg.slot < s.hi && !newer
}

// stepSize is q.stepRecipients, or StepRecipients when it is not set
// (tests set it).
func (q *Queue) stepSize() int {
	if q.stepRecipients > 0 {
		return q.stepRecipients
	}
	return StepRecipients
}

// plan cuts what t may select in from into spans of about stepSize
// candidates each, in slot order, with the candidates each holds (more
// than it may select when t filters on what only the spool holds). q.mu
// held.
func (q *Queue) plan(from int, t Target) (spans []span, sizes []int) {
	counts := make([]int32, len(q.msgs.recs))
	q.walk(from, q.matcher(t, span{}), func(it *item, r *waitRec, _ bool) {
		if r != nil {
			counts[r.msg.slot] += int32(q.recCount(r))
		} else {
			counts[it.msg.slot] += int32(it.count())
		}
	})
	limit, gen := q.stepSize(), q.msgs.gen
	lo, acc := 0, 0
	for slot, c := range counts {
		acc += int(c)
		if acc >= limit || slot == len(counts)-1 && acc > 0 {
			spans = append(spans, span{lo: uint32(lo), hi: uint32(slot + 1), gen: gen, on: true})
			sizes = append(sizes, acc)
			lo, acc = slot+1, 0
		}
	}
	return spans, sizes
}

// inSteps runs an action on what t selects in from a span at a time
// (plan), in order: it takes the span's recipients out of the queue
// (extract) and hands them to step (last: the final span), which places
// every item back or settles it. It stops at the first error of step
// and returns it with the candidates of the spans not done, the failed
// one's included.
func (q *Queue) inSteps(from int, t Target, step func(items []*item, last bool) error) (left int, err error) {
	q.mu.Lock()
	spans, sizes := q.plan(from, t)
	q.mu.Unlock()
	for i, sp := range spans {
		if i > 0 {
			collectStep()
			if q.betweenSteps != nil {
				q.betweenSteps()
			}
		}
		if err := step(q.extract(from, t, sp), i == len(spans)-1); err != nil {
			for _, n := range sizes[i:] {
				left += n
			}
			return left, err
		}
	}
	return 0, nil
}

// hydrateMany reads the compact items of a step (owned by the caller)
// back from the spool in the spool's key order, in one pass
// (spool.QueuedMany): a point read each (hydrate) costs several times
// more once the step's own writes have been flushed. It returns the
// error of each item's read (nil for all when every one was read or
// loaded already).
func (q *Queue) hydrateMany(items []*item) []error {
	var todo []int
	for i, it := range items {
		if it.loaded == nil {
			todo = append(todo, i)
		}
	}
	slices.SortFunc(todo, func(a, b int) int { return strings.Compare(items[a].id, items[b].id) })
	ids, idxs := make([]string, len(todo)), make([][]uint16, len(todo))
	for k, i := range todo {
		ids[k], idxs[k] = items[i].id, items[i].indexes()
	}
	var errs []error
	fail := func(i int, err error) {
		if errs == nil {
			errs = make([]error, len(items))
		}
		errs[i] = err
	}
	err := q.sp.QueuedMany(ids, idxs, func(k int, m *spool.Meta, rs []*spool.Recipient, err error) {
		if err != nil {
			fail(todo[k], err)
			return
		}
		items[todo[k]].load(&loaded{meta: m, rcpts: rs})
	})
	if err != nil {
		for _, i := range todo {
			if items[i].loaded == nil {
				fail(i, err)
			}
		}
	}
	return errs
}

// IncompleteError is the error of a Hold, Release, Bounce or Cancel that
// stopped part way (docs/operating.md#queue-control). These act in
// steps of about StepRecipients recipients, each recorded in the spool
// before the next begins: Done recipients were acted on (0: none) before
// Err stopped it at a step that could not be recorded (a full or failing
// spool) or read back; that step and the rest, at most Left recipients,
// are as they were, in the queue and in the spool (Bounce and Cancel
// record each message on its own: the messages of that step before the
// refused one are done, and counted in Done). Running the action again
// acts on the rest.
//
// Unread is true when Err is a failure to read the step's recipients
// back from the spool (a Hold or Release; a recipient missing from the
// spool does not stop them), not to record them.
//
// EventErr is the spool's refusal of the action's queue_* event (the
// one counting the Done recipients), nil when it was recorded. The
// cause that stopped the action (a spool full below its write floor)
// usually refuses the event too: the action is then logged at error
// level instead ("queue action stopped part way and its event was not
// recorded"), with its event type, the API key id, the filter and the
// recipients done, which is its only record.
type IncompleteError struct {
	Done, Left int
	Err        error
	Unread     bool
	EventErr   error
}

func (e *IncompleteError) Error() string {
	s := fmt.Sprintf("queue: the action stopped after %d recipients (at most %d left; run it again for the rest): %v", e.Done, e.Left, e.Err)
	if e.EventErr != nil {
		s += "; its event was not recorded either (logged instead)"
	}
	return s
}

func (e *IncompleteError) Unwrap() error { return e.Err }

// collectStep starts a garbage collection between two steps of an
// action, when the step just done is garbage, unless the one it started
// before is still running: the action's memory is then about the live
// heap plus two steps (some 20-40 MB each), where the collector's own
// pace (GOGC=100) lets the heap grow to twice the live heap before it
// collects (with a million queued, some 120 MB more than at rest:
// BENCHMARKS.md, "Issue 21: a live hold of a million under 500 MB"). It
// runs in the background, beside the next step: a step does not wait
// for it. The queue's index is pointer-free, so a collection marks
// little more than the rest of the relay's heap.
var collectStep = func() {
	if stepGC.CompareAndSwap(false, true) {
		go func() {
			defer stepGC.Store(false)
			runtime.GC()
		}()
	}
}

// stepGC is true while a collection collectStep started runs.
var stepGC atomic.Bool

// stoppedEvent records the event (typ) of an action on t by the API key
// by that stopped part way (ie) after done recipients, and returns the
// spool's refusal of it. A refused event is logged at error level in
// its place: the action's only record then.
func (q *Queue) stoppedEvent(typ string, t Target, by string, done int, ie *IncompleteError) error {
	b := q.sp.NewBatch()
	q.adminEvent(b, typ, t, by, done)
	err := b.Commit(false)
	if err != nil {
		q.log.Error("queue action stopped part way and its event was not recorded", "event", typ,
			"queue", t.Filter.Queue, "msgid", t.MessageID, "filter", FilterString(t.Filter), "by", by,
			"recipients_done", done, "recipients_left_at_most", ie.Left, "stopped_by", ie.Err, "err", err)
	}
	return err
}
