// Package queue schedules delivery of spooled recipients: one in-memory
// queue per destination (a recipient domain for MX routes, a smarthost for
// relay routes) with bounded concurrency and connection reuse, a timer heap
// for deferred recipients, exponential backoff with jitter, a queue
// lifetime after which recipients expire, and bounces.
//
// The spool is the source of truth; the queue's memory is an index of it,
// rebuilt by Load at start. Every outcome (delivered, deferred, bounced,
// expired) is committed to the spool together with its event in one batch;
// a bounce message is injected into the spool in that same batch.
//
// Goroutines: one timer goroutine, plus at most MaxPerDestination workers
// per destination, each holding at most one connection; all connections
// together are bounded by MaxConnections. Stop stops them all.
package queue

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sluice-mta/sluice/internal/bounce"
	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/internal/dsn"
	"github.com/sluice-mta/sluice/internal/logx"
	"github.com/sluice-mta/sluice/internal/metrics"
	"github.com/sluice-mta/sluice/internal/shaping"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// Conn is one open SMTP session to a destination, reused for several
// messages. *delivery.Session implements it.
type Conn interface {
	// Deliver sends one message (see delivery.Session.Deliver). results
	// has one entry per env.Rcpts, in order: Err nil when accepted, the
	// Reply that decided it (on success the next hop's own reply to the
	// end of data, recorded in the "delivered" event), and DSN, true when
	// the next hop offered the DSN extension and so took over the
	// delivery status notifications for that recipient. err means the
	// whole transaction failed and the connection must not be reused.
	//
	// For the DSN side: a delivered recipient whose RcptParams.Notify
	// holds SUCCESS gets a "relayed" DSN from Sluice only when DSN is
	// false (RFC 3461 section 6.2.6); with DSN true the next hop answers
	// for it. The flag reaches Queue.complete as res[i].DSN, next to the
	// recipient's spool.Recipient (Params.Notify, Params.ORCPT); it is not
	// in the delivered event.
	Deliver(ctx context.Context, env *delivery.Envelope, data []byte) (results []delivery.Result, err error)
	Remote() pipeline.Remote
	Usable() bool
	Close() error
}

// Dialer opens a Conn for a route. For MX routes it resolves domain.
type Dialer interface {
	Dial(ctx context.Context, route *pipeline.Route, domain string) (Conn, error)
}

// EgressDialer is a Dialer that can connect from an egress source (with a
// site's timeouts); the queue uses it when shaping is on. A Dialer
// without it always connects from the host's own address.
type EgressDialer interface {
	DialFrom(ctx context.Context, route *pipeline.Route, domain string, eg delivery.Egress) (Conn, error)
}

// Failure is one recipient that bounced or expired, for the DSN.
type Failure struct {
	Recipient string
	Expired   bool
	Reply     *pipeline.Response // as recorded in the event
	// Err is the error of the last attempt as it happened: a remote
	// server's reply carries a *delivery.ReplyError, anything Sluice
	// decided itself does not (so the DSN can tell them apart).
	Err    error
	Remote string
	Time   time.Time
}

// Bouncer turns failed recipients of a message into a bounce. Bounce
// stages the DSN (as a new message, with its events) into b, the batch
// that records the failures, and returns what to Enqueue once b commits;
// nils when no bounce is sent. It is called with the original metadata
// and bytes. A queue without a Bouncer sends no bounces (tests only).
type Bouncer interface {
	Bounce(ctx context.Context, b *spool.Batch, m *spool.Meta, data []byte, failed []Failure) (*spool.Meta, []*spool.Recipient)
}

// SetBouncer sets the bouncer; call it before Load and Start.
func (q *Queue) SetBouncer(b Bouncer) { q.bounce = b }

// Notifier turns the outcomes of one delivery attempt into the DSNs they
// owe (RFC 3461: failures, "relayed" successes, delay warnings), honouring
// each recipient's NOTIFY. Notify stages the report into b (the batch of
// the outcomes) and returns what to Enqueue once b commits; nils when no
// report is due. body reads the message, only when a report is built. A
// Delayed notice's Rcpt is the recipient as it will be stored: Notify may
// mark it warned and put it into b again. internal/relay implements it.
type Notifier interface {
	Notify(ctx context.Context, b *spool.Batch, m *spool.Meta, body func() ([]byte, error), notes []dsn.Notice) (*spool.Meta, []*spool.Recipient)
}

// SetNotifier sets the notifier, which replaces the Bouncer for delivery
// outcomes; call it before Load and Start.
func (q *Queue) SetNotifier(n Notifier) { q.notifier = n }

// Options tunes the queue. Zero values take the defaults of
// config.Defaults().Delivery.
type Options struct {
	MaxConnections     int
	MaxPerDestination  int
	MaxMessagesPerConn int
	IdleTimeout        time.Duration
	RetryInitial       time.Duration
	RetryMax           time.Duration
	RetryFactor        float64
	RetryJitter        float64
	QueueLifetime      time.Duration
	// Bounces sets bounce_class on deferred, bounced and expired events
	// (docs/events.md); nil: bounce.Default(), the embedded rules.
	Bounces *bounce.Classifier
	// Shaper, when set, turns on outbound shaping (docs/shaping.md): MX
	// recipients are queued per site (the recipient domains with the same
	// MX hosts) and route pool, and each connection and message follows
	// the site's limits for the egress source it leaves from. nil keeps
	// one queue per recipient domain with MaxPerDestination and
	// MaxMessagesPerConn.
	Shaper *shaping.Shaper
	Logger *slog.Logger
	Now    func() time.Time // for tests; default time.Now
	// Metrics, when set, counts attempts and recipient outcomes
	// (metrics.go).
	Metrics *metrics.Node
}

// Queue is safe for concurrent use.
type Queue struct {
	o        Options
	sp       *spool.Spool
	dialer   Dialer
	bounce   Bouncer
	notifier Notifier
	log      *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	sem    chan struct{}
	wake   chan struct{}
	// slotWaiters counts workers waiting for a connection slot (sem);
	// yield wakes one idle worker so that it gives its slot up (take).
	slotWaiters atomic.Int32
	yield       chan struct{}
	wg          sync.WaitGroup

	// spoolHeld is true while deliveries are held because the spool
	// cannot record their outcomes (see holdForSpool); sample keeps
	// per-message failures from flooding the log.
	spoolHeld atomic.Bool
	sample    *logx.Sampler

	// attemptOK and delivered are resolved metric children (metrics.go).
	attemptOK, delivered prometheus.Counter

	mu       sync.Mutex
	stopping bool
	// lookups holds messages whose recipient domains' sites are not known
	// yet, for at most maxSiteLookups goroutines (lookupWorkers) to name.
	lookups       []pendingLookup
	lookupWorkers int
	dests         map[string]*dest
	// msgs, waiting, destTab and more are the index of waiting
	// recipients, which the garbage collector does not scan (index.go).
	msgs    msgSlab
	waiting waitHeap
	destTab destTable
	// more holds the recipient indexes of waiting records with several
	// (waitRec.more); moreSeq numbers them.
	more    map[uint32]*[]uint16
	moreSeq uint32
	// pausedSet holds the paused queue names (control.go).
	pausedSet map[string]bool
	// held holds the items an operator holds (control.go), in no ready
	// list and not in the timer heap: compact records in no order, which
	// the garbage collector does not scan (index.go; a paused million).
	held []waitRec
	// stepRecipients is the size of a control action's step (steps.go;
	// 0: StepRecipients), betweenSteps what runs between two steps:
	// tests set them.
	stepRecipients int
	betweenSteps   func()
}

// item is some recipients of one message for one destination, attempted
// together in one transaction.
//
// An item waiting is a pointer-free waitRec (index.go) in the timer
// heap, among the held items and at the back of a long ready list
// (dest.back); taken out of them it is compact: loaded is nil and it
// keeps its recipients' indexes (indexes).
// The metadata and recipients stay in the spool, which
// holds them as they are (every change to a recipient is committed
// before its item is placed again). hydrate reads them back when the
// item is taken for delivery or a control action needs them (issue 21:
// a million queued recipients kept about 530 bytes each in memory
// with the spool's Meta and Recipient). A compact item's rcpts, meta and
// by must not be read (they are loaded's); count works either way.
type item struct {
	msg msgRef
	// id is the message id (msg's, kept here for reads without q.mu).
	id   string
	dest *dest
	*loaded
	// more holds a compact item's recipient indexes when it has several
	// (a new slice at each compact: see idxRef); one is the index of a
	// compact item's single recipient (single).
	more   *[]uint16
	due    int64 // Unix nanoseconds (nanos)
	one    uint16
	single bool
	// held: an operator holds the item's recipients (control.go); an item
	// holds only held recipients or none.
	held bool
}

// idxRef identifies a compact item's recipient indexes: equal refs of
// one item mean it was not compacted again in between (so the same
// recipients, as the spool holds them).
type idxRef struct {
	more   *[]uint16
	one    uint16
	single bool
}

func (it *item) ref() idxRef { return idxRef{it.more, it.one, it.single} }

// indexes is a compact item's recipient indexes.
func (it *item) indexes() []uint16 {
	switch {
	case it.single:
		return []uint16{it.one}
	case it.more != nil:
		return *it.more
	}
	return nil
}

// setRef makes it compact with r's indexes.
func (it *item) setRef(r idxRef) {
	it.loaded, it.more, it.one, it.single = nil, r.more, r.one, r.single
}

// loaded is an item's message metadata and recipients as read from the
// spool (or handed to Enqueue).
type loaded struct {
	meta  *spool.Meta
	rcpts []*spool.Recipient
	// by is the API key id of an operator who bounces or cancels the
	// item's recipients (control.go); "" for a delivery attempt.
	by string
}

// count is how many recipients it holds.
func (it *item) count() int {
	switch {
	case it.loaded != nil:
		return len(it.rcpts)
	case it.single:
		return 1
	case it.more != nil:
		return len(*it.more)
	}
	return 0
}

// compact drops a loaded item's metadata and recipients, keeping their
// indexes (the spool holds them as they are). q.mu held, or it owned.
func (it *item) compact() {
	if it.loaded == nil {
		return
	}
	var r idxRef
	switch n := len(it.rcpts); n {
	case 0:
	case 1:
		r.one, r.single = uint16(it.rcpts[0].Idx), true
	default:
		idxs := make([]uint16, n)
		for i, rc := range it.rcpts {
			idxs[i] = uint16(rc.Idx)
		}
		r.more = &idxs
	}
	it.setRef(r)
}

// nanos is t in Unix nanoseconds, as the queue keeps times: the zero
// time (a recipient never attempted) is math.MinInt64, before any other
// (time.Time.UnixNano leaves it undefined), and times past what int64
// nanoseconds hold (the year 2262) are math.MaxInt64.
func nanos(t time.Time) int64 {
	switch {
	case t.IsZero():
		return math.MinInt64
	case t.Year() >= 2262:
		return math.MaxInt64
	case t.Year() < 1678:
		return math.MinInt64 + 1
	}
	return t.UnixNano()
}

// timeOf is nanos's inverse: math.MinInt64 is the zero time.
func timeOf(ns int64) time.Time {
	if ns == math.MinInt64 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// hydrate reads a compact item's metadata and recipients back from the
// spool (see item); a loaded item is left as it is. The error wraps
// spool.ErrNotQueued when the spool lost them. Call it with q.mu held or
// on an item the caller owns (taken out of every list).
func (q *Queue) hydrate(it *item) error {
	if it.loaded != nil {
		return nil
	}
	m, rs, err := q.sp.Queued(it.id, it.indexes())
	if err != nil {
		return err
	}
	it.load(&loaded{meta: m, rcpts: rs})
	return nil
}

// load makes it hold ld.
func (it *item) load(ld *loaded) {
	it.setRef(idxRef{})
	it.loaded = ld
}

// unreadable handles an item whose recipients could not be read back
// from the spool (hydrate's err), which is taken out of every list:
// missing records are dropped (nothing can deliver them; the spool's
// start-up scan skips them the same way), other errors retried after
// RetryInitial; a held item (an operator's bounce or cancel of held
// recipients) goes back among the held ones, as the spool has it.
func (q *Queue) unreadable(it *item, err error) {
	if errors.Is(err, spool.ErrNotQueued) && q.salvage(it) {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if errors.Is(err, spool.ErrNotQueued) {
		q.log.Error("queued recipients missing from the spool; dropped", "msgid", it.id, "recipients", it.count(), "err", err)
		q.settled(it.msg, it.count())
		return
	}
	if ok, n := q.sample.Allow("unreadable"); ok {
		q.log.Error("cannot read queued recipients from the spool; will retry", "msgid", it.id, "err", err, "similar_suppressed", n)
	}
	if it.held {
		q.place(it, q.o.Now())
		return
	}
	it.due = q.o.Now().Add(q.o.RetryInitial).UnixNano()
	q.wait(it)
	q.kick()
}

// salvage reads a compact item's recipients one at a time after a read
// that failed because a record is missing from the spool: when only some
// of its recipients are gone, those are dropped (settled, as unreadable
// drops a whole item) and the others placed back, loaded, as they were,
// instead of leaving the queue with the item while the spool still holds
// them. It reports whether it placed the item; false leaves the item to
// the caller (nothing found, a single recipient, or another read error).
// Call it without q.mu.
func (q *Queue) salvage(it *item) bool {
	if it.loaded != nil || it.count() < 2 {
		return false
	}
	var meta *spool.Meta
	var rs []*spool.Recipient
	missing := 0
	for _, idx := range slices.Clone(it.indexes()) {
		m, r, err := q.sp.Queued(it.id, []uint16{idx})
		switch {
		case err == nil:
			meta, rs = m, append(rs, r[0])
		case errors.Is(err, spool.ErrNotQueued):
			missing++
		default:
			return false
		}
	}
	if len(rs) == 0 {
		return false
	}
	it.load(&loaded{meta: meta, rcpts: rs})
	q.mu.Lock()
	defer q.mu.Unlock()
	q.log.Error("queued recipients missing from the spool; dropped", "msgid", it.id, "recipients", missing, "kept", len(rs))
	q.settled(it.msg, missing)
	q.place(it, q.o.Now())
	return true
}

// wait puts it, compact, into the timer heap and returns its position
// there (0: due first). q.mu held.
func (q *Queue) wait(it *item) int {
	return q.waiting.push(q.park(it))
}

type dest struct {
	key    string
	name   string // queue name in events
	route  *pipeline.Route
	domain string
	site   string  // shaping on: the site (MX routes) or queue name
	tls    tlsNeed // REQUIRETLS or TLS-Required: No (requiretls.go)
	max    int     // workers at most
	ready  []*item
	// back is the rest of the ready list, behind ready, once readyLoaded
	// items are in ready: compact records, in order (index.go).
	back     []waitRec
	active   int
	idle     int
	starting int // workers started that have not taken their first item
	wake     chan struct{}
	// lastReply is the last reply recorded for a recipient of d, shared
	// by its recipients deferred with an equal one (share).
	lastReply *pipeline.Response
}

// share makes r hold d's route and last reply when its own are equal to
// them, so that many recipients queued for one destination hold one copy
// of each (issue 21: a million queued for a destination that is down).
// Nothing changes a Route or Response in place. q.mu held.
func (d *dest) share(r *spool.Recipient) {
	if r.Route != nil && r.Route != d.route && *r.Route == *d.route {
		r.Route = d.route
	}
	if lr := r.LastReply; lr != nil && lr != d.lastReply {
		if d.lastReply != nil && *lr == *d.lastReply {
			r.LastReply = d.lastReply
		} else {
			d.lastReply = lr
		}
	}
}

// New creates a queue; call Load, then Start. Limits, timeouts and retry
// settings left at zero (a RetryFactor below 1 too) take the defaults of
// config.Defaults().Delivery, those of a configuration that does not set
// them. RetryJitter is not defaulted: 0 means no jitter.
func New(sp *spool.Spool, d Dialer, o Options) *Queue {
	def := config.Defaults().Delivery
	if o.MaxConnections <= 0 {
		o.MaxConnections = def.MaxConnections
	}
	if o.MaxPerDestination <= 0 {
		o.MaxPerDestination = def.MaxPerDestination
	}
	if o.MaxMessagesPerConn <= 0 {
		o.MaxMessagesPerConn = def.MaxMessagesPerConn
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = def.IdleTimeout
	}
	if o.RetryInitial <= 0 {
		o.RetryInitial = def.RetryInitial
	}
	if o.RetryMax <= 0 {
		o.RetryMax = def.RetryMax
	}
	if o.RetryFactor < 1 {
		o.RetryFactor = def.RetryFactor
	}
	if o.QueueLifetime <= 0 {
		o.QueueLifetime = def.QueueLifetime
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Bounces == nil {
		o.Bounces = bounce.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	ctx, cancel := context.WithCancel(context.Background())
	q := &Queue{
		o: o, sp: sp, dialer: d, log: o.Logger.With("component", "queue"), sample: logx.NewSampler(10 * time.Second),
		ctx: ctx, cancel: cancel,
		sem:   make(chan struct{}, o.MaxConnections),
		wake:  make(chan struct{}, 1),
		yield: make(chan struct{}, 1),
		dests: map[string]*dest{},
	}
	q.resolveMetrics()
	return q
}

// Load rebuilds the queues from the spool. Call it once, before Start.
func (q *Queue) Load() (int, error) {
	var (
		cur   *spool.Meta
		batch []*spool.Recipient
		n     int
	)
	flush := func() {
		if cur != nil && len(batch) > 0 {
			q.add(cur, batch, true)
		}
		batch = nil
	}
	// The pauses first: Enqueue dispatches what is due at once, and a
	// paused queue's recipients must wait.
	if err := q.loadPaused(); err != nil {
		return 0, err
	}
	// The brief scan decodes only what an item keeps: the items are
	// compact from the start, and an attempt reads its recipients back.
	err := q.sp.ScanQueued(func(m *spool.Meta, r *spool.Recipient) error {
		if cur == nil || cur.ID != m.ID {
			flush()
			cur = m
		}
		batch = append(batch, r)
		n++
		return nil
	})
	flush()
	return n, err
}

// Start starts the timer goroutine.
func (q *Queue) Start() {
	q.wg.Add(1)
	go q.timerLoop()
}

// Stop stops dispatching, lets in-flight deliveries finish until ctx ends,
// then cancels them (they are retried after restart).
func (q *Queue) Stop(ctx context.Context) {
	q.mu.Lock()
	q.stopping = true
	for _, d := range q.dests {
		for i := 0; i < d.idle; i++ {
			select {
			case d.wake <- struct{}{}:
			default:
			}
		}
	}
	q.mu.Unlock()
	q.kick()
	done := make(chan struct{})
	go func() { q.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		q.cancel()
		<-done
	}
	q.cancel()
}

// Stats is a snapshot for logs, metrics and tests.
type Stats struct {
	// Ready and Waiting count items (a message's recipients for one
	// destination, attempted together), not recipients.
	Messages, Ready, Waiting, Active int
	// Held is the recipients an operator holds (control.go).
	Held int
	// ReadyRecipients and WaitingRecipients are the recipients of the
	// Ready and Waiting items, as Queues counts them (the
	// sluice_queue_*_recipients gauges).
	ReadyRecipients, WaitingRecipients int
}

// Stats returns counts of queued messages, ready and waiting items and
// their recipients, held recipients and active workers. It walks every
// queued item under the queue's lock (as Oldest): for a scrape every few
// seconds, not for a hot path.
func (q *Queue) Stats() Stats {
	q.mu.Lock()
	defer q.mu.Unlock()
	s := Stats{Messages: q.msgs.len(), Waiting: len(q.waiting)}
	for _, d := range q.dests {
		s.Ready += readyLen(d)
		s.Active += d.active
		for _, it := range d.ready {
			s.ReadyRecipients += it.count()
		}
		for i := range d.back {
			s.ReadyRecipients += q.recCount(&d.back[i])
		}
	}
	for i := range q.waiting {
		s.WaitingRecipients += q.recCount(&q.waiting[i])
	}
	for i := range q.held {
		s.Held += q.recCount(&q.held[i])
	}
	return s
}

// destKey is the queue of a recipient: its route's queue name for domain
// (with shaping, its site for MX routes), TLS policy, credentials, port
// and egress pool.
func destKey(r *pipeline.Route, domain string) string {
	k := r.Kind + "|" + r.QueueName(domain) + "|" + r.TLS + "|" + r.AuthUser
	if r.Kind == pipeline.RouteMX && r.Port != 0 {
		k += "|" + strconv.Itoa(r.Port)
	}
	if r.Pool != "" {
		k += "|" + r.Pool
	}
	return k
}

// sitesOf looks up the shaping site of every MX recipient's domain
// (nil without shaping). With cachedOnly it does not wait for DNS and
// reports false when a site is not known yet; otherwise it may wait: call
// it without q.mu.
func (q *Queue) sitesOf(rcpts []*spool.Recipient, cachedOnly bool) (map[string]string, bool) {
	if q.o.Shaper == nil {
		return nil, true
	}
	sites := map[string]string{}
	for _, r := range rcpts {
		if r.Route != nil && r.Route.Kind != pipeline.RouteMX {
			continue
		}
		if _, ok := sites[r.Domain]; ok {
			continue
		}
		if cachedOnly {
			site, ok := q.o.Shaper.CachedSite(r.Domain)
			if !ok {
				return nil, false
			}
			sites[r.Domain] = site
			continue
		}
		sites[r.Domain] = q.o.Shaper.Site(q.ctx, r.Domain)
	}
	return sites, true
}

// maxSiteLookups bounds the goroutines that look up the sites of
// recipient domains not known yet (shaping on): a burst of mail to many
// new domains queues here instead of starting a goroutine per message.
// The shaper shares one lookup among callers asking for the same domain.
const maxSiteLookups = 64

type pendingLookup struct {
	m     *spool.Meta
	rcpts []*spool.Recipient
	brief bool
}

// Enqueue adds a spooled message's recipients (already committed) to the
// queues. Recipients with a future NextAttempt wait in the timer heap.
// With shaping, a message with a recipient domain whose site is not known
// yet waits for one of at most maxSiteLookups lookup goroutines (owned by
// the queue, ended by Stop), so that Enqueue never waits for DNS: it runs
// before the client's 250.
func (q *Queue) Enqueue(m *spool.Meta, rcpts []*spool.Recipient) {
	q.add(m, rcpts, false)
}

// add is Enqueue; brief: m and rcpts are as spool.ScanQueued fills them,
// so the items are compact at once (they are read back in full before
// an attempt).
func (q *Queue) add(m *spool.Meta, rcpts []*spool.Recipient, brief bool) {
	sites, known := q.sitesOf(rcpts, true)
	if known {
		q.enqueue(m, rcpts, sites, brief)
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.stopping {
		return // the spool keeps them; Load finds them at the next start
	}
	q.lookups = append(q.lookups, pendingLookup{m, rcpts, brief})
	if q.lookupWorkers < maxSiteLookups {
		q.lookupWorkers++
		q.wg.Add(1)
		go q.lookupLoop()
	}
}

// lookupLoop names the sites of waiting messages and queues them, until
// none waits or the queue stops (the spool keeps the rest for Load).
func (q *Queue) lookupLoop() {
	defer q.wg.Done()
	for {
		q.mu.Lock()
		if len(q.lookups) == 0 || q.stopping {
			q.lookupWorkers--
			q.mu.Unlock()
			return
		}
		p := q.lookups[0]
		q.lookups[0] = pendingLookup{}
		q.lookups = q.lookups[1:]
		if len(q.lookups) == 0 {
			q.lookups = nil
		}
		q.mu.Unlock()
		sites, _ := q.sitesOf(p.rcpts, false)
		q.enqueue(p.m, p.rcpts, sites, p.brief)
	}
}

func (q *Queue) enqueue(m *spool.Meta, rcpts []*spool.Recipient, sites map[string]string, brief bool) {
	now := q.o.Now()
	q.mu.Lock()
	defer q.mu.Unlock()
	msg, ok := q.msgs.lookup(m.ID)
	if !ok {
		msg = q.msgs.add(m.ID, nanos(m.Received))
	}
	q.msgs.get(msg).remaining += int32(len(rcpts))
	need := tlsNeedOf(m) // the message's, the same for each recipient
	groups := map[string]*item{}
	var order []*item
	for _, r := range rcpts {
		route := r.Route
		if route == nil {
			route = pipeline.MX()
		}
		site, shaped := sites[r.Domain]
		k := destKey(route, r.Domain)
		if shaped {
			k = destKey(route, site)
		}
		k += need.key()
		gk := k
		if r.Held {
			gk += "|held" // held recipients make an item of their own
		}
		it := groups[gk]
		if it == nil {
			d := q.dests[k]
			if d == nil {
				d = q.newDest(k, route, r.Domain, site)
				d.tls = need
				q.dests[k] = d
			}
			it = &item{msg: msg, id: m.ID, dest: d, loaded: &loaded{meta: m}, due: nanos(r.NextAttempt), held: r.Held}
			groups[gk] = it
			order = append(order, it)
		}
		if due := nanos(r.NextAttempt); due > it.due {
			it.due = due
		}
		it.dest.share(r)
		it.rcpts = append(it.rcpts, r)
	}
	for _, it := range order {
		if brief {
			it.compact()
		}
		q.place(it, now)
	}
}

// newDest makes the queue of a destination. With shaping its workers
// are bounded by the connection limits of its site on its pool's
// sources; otherwise by MaxPerDestination. q.mu held.
func (q *Queue) newDest(k string, route *pipeline.Route, domain, site string) *dest {
	d := &dest{key: k, name: route.QueueName(domain), route: route, domain: domain, max: q.o.MaxPerDestination}
	if q.o.Shaper != nil {
		if site == "" {
			site = route.QueueName(domain)
		}
		d.site = site
		d.max = q.o.Shaper.PoolConnections(site, route.Pool)
	}
	// Room for every worker the site may ever have: a rule can raise the
	// limit back after lowering it.
	d.wake = make(chan struct{}, max(d.max, q.o.MaxPerDestination))
	return d
}

// readyLoaded is how many items of a destination's ready list stay
// loaded (see item): those behind them are compact, so that a paused
// queue, or a burst larger than its workers take, does not hold every
// message's metadata in memory. Items at the front go out at once
// without a read back from the spool.
const readyLoaded = 256

// schedule puts an item in its destination's ready list or the timer heap.
// Called with q.mu held.
func (q *Queue) schedule(it *item, now time.Time) {
	if it.due > now.UnixNano() {
		if q.wait(it) == 0 {
			q.kick()
		}
		return
	}
	d := q.live(it.dest)
	q.pushReady(d, it)
	q.dispatch(d)
}

// live returns the registered destination for d's key, registering d when
// there is none. An idle destination is forgotten (take), but items
// waiting in the timer heap still point at it: they must rejoin the one
// destination object that owns the key, or two workers pools would serve
// one destination. q.mu held.
func (q *Queue) live(d *dest) *dest {
	if cur, ok := q.dests[d.key]; ok {
		return cur
	}
	q.dests[d.key] = d
	return d
}

// dispatch wakes an idle worker of d or starts a new one. q.mu held.
func (q *Queue) dispatch(d *dest) {
	if q.stopping || q.paused(d) {
		return
	}
	if d.idle > 0 {
		select {
		case d.wake <- struct{}{}:
		default:
		}
	}
	// Idle workers take one item each; start more (up to the limit) for
	// the rest of a burst rather than leaving it to one worker.
	if q.o.Shaper != nil {
		// An adaptive rule may have lowered (or restored) the site's
		// connection limit since the last dispatch.
		d.max = q.o.Shaper.PoolConnections(d.site, d.route.Pool)
	}
	// While every connection slot is taken, a destination that has a
	// worker gets no more: its worker delivers the rest over its
	// connection, instead of a worker per message each waiting for a slot
	// (10,000 destinations made 60,000 such goroutines).
	for readyLen(d) > d.idle+d.starting && d.active < d.max && (d.active == 0 || len(q.sem) < cap(q.sem)) {
		d.active++
		d.starting++
		q.wg.Add(1)
		go q.worker(d)
	}
}

func (q *Queue) kick() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *Queue) timerLoop() {
	defer q.wg.Done()
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		q.mu.Lock()
		if q.stopping {
			q.mu.Unlock()
			return
		}
		now := q.o.Now().UnixNano()
		for len(q.waiting) > 0 && q.waiting[0].due <= now {
			q.dispatch(q.readyRec(q.waiting.pop()))
		}
		wait := time.Hour
		if len(q.waiting) > 0 {
			wait = time.Duration(q.waiting[0].due - now)
		}
		q.mu.Unlock()
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(wait)
		select {
		case <-t.C:
		case <-q.wake:
		case <-q.ctx.Done():
			return
		}
	}
}

// take returns the next ready item of d. With an open connection it waits
// up to IdleTimeout for one; without, it returns nil at once when d is
// empty. When it returns nil the worker has been retired (active--).
func (q *Queue) take(d *dest, haveConn, first bool, idle time.Duration) *item {
	deadline := time.Now().Add(idle)
	q.mu.Lock()
	defer q.mu.Unlock()
	if first {
		d.starting--
	}
	for {
		if q.stopping {
			d.active--
			return nil
		}
		if !q.paused(d) {
			q.refill(d)
		}
		if len(d.ready) > 0 && !q.paused(d) {
			it := d.ready[0]
			d.ready[0] = nil
			d.ready = d.ready[1:]
			if readyLen(d) > 0 {
				// More workers for the rest once connection slots are
				// free again (dispatch holds back while they are not).
				q.dispatch(d)
			}
			return it
		}
		wait := time.Until(deadline)
		// An idle connection gives its slot up at once when a worker of
		// another destination waits for one: with thousands of
		// destinations and few messages each, idling IdleTimeout on every
		// slot held the others back (issue 21: 10,000 destinations drained
		// at about 60 messages/s).
		if !haveConn || wait <= 0 || q.slotWaiters.Load() > 0 {
			d.active--
			if d.active == 0 && d.idle == 0 && readyLen(d) == 0 && q.dests[d.key] == d {
				delete(q.dests, d.key) // forget idle destinations
			}
			return nil
		}
		d.idle++
		q.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-d.wake:
		case <-t.C:
		case <-q.yield:
		case <-q.ctx.Done():
		}
		t.Stop()
		q.mu.Lock()
		d.idle--
	}
}

func (q *Queue) worker(d *dest) {
	defer q.wg.Done()
	var (
		conn  Conn
		sent  int
		held  bool
		lease *shaping.Lease // shaping on and conn open
	)
	closeConn := func() {
		if conn != nil {
			_ = conn.Close()
			conn = nil
		}
		if lease != nil {
			lease.Release()
			lease = nil
		}
	}
	release := func() {
		closeConn()
		if held {
			<-q.sem
			held = false
		}
	}
	defer release()
	idle, maxPer := q.o.IdleTimeout, q.o.MaxMessagesPerConn
	for first := true; ; first = false {
		it := q.take(d, conn != nil, first, idle)
		if it == nil {
			return
		}
		if !q.sp.Writable() {
			q.holdForSpool(it)
			continue
		}
		if q.spoolHeld.Swap(false) {
			q.log.Info("the spool records outcomes again; delivery resumes")
		}
		if conn != nil && (!conn.Usable() || sent >= maxPer) {
			closeConn()
		}
		eg := d.tls.egress()
		if conn == nil && q.o.Shaper == nil && d.route.Pool != "" {
			q.complete(it, nil, shaping.UnknownPool(d.route.Pool), nil) // no sluice.egress
			continue
		}
		if conn == nil && q.o.Shaper != nil {
			l, retry, reason, err := q.o.Shaper.Acquire(d.site, d.route.Pool, q.o.IdleTimeout)
			if err != nil {
				q.complete(it, nil, err, nil)
				continue
			}
			if l == nil {
				q.shapeHold(d, it, retry, reason)
				q.retire(d)
				return
			}
			lease = l
			var ci time.Duration
			eg.ConnectTimeout, eg.DataTimeout, ci = l.Timeouts()
			eg.Source, eg.HELO = l.Source.Address, l.Source.HELO
			idle, maxPer = orDur(ci, q.o.IdleTimeout), l.MaxPerConnection()
		}
		if conn == nil {
			if !held {
				if !q.acquireSlot() {
					q.requeue(it)
					q.retire(d)
					return
				}
				held = true
			}
			c, err := q.dial(d, eg, lease != nil)
			if err != nil {
				q.countAttempt("connect", 0)
				if lease != nil && !delivery.RefusesMessage(err) {
					// (A refusal of the message itself says nothing
					// about the site: no shaping rule may act on it.)
					lease.Observe([]*pipeline.Response{replyOf(err)}, nil)
				}
				// A TLS policy's refusal names its host and RFC 8460
				// result in the events (remote.tls_failure).
				tlsRemote := delivery.TLSRemote(err)
				q.complete(it, nil, err, tlsRemote)
				if pipeline.IsTemporary(err) {
					// The destination is down: defer what else is ready for
					// it now rather than dialing once per message.
					for _, other := range q.drain(d) {
						q.complete(other, nil, err, tlsRemote)
					}
				}
				release()
				continue
			}
			conn, sent = c, 0
		}
		if err := q.hydrate(it); err != nil {
			q.unreadable(it, err)
			continue
		}
		data, err := q.sp.Body(it.meta.ID)
		if err != nil {
			q.log.Error("spooled message unreadable; will retry", "msgid", it.meta.ID, "err", err)
			q.complete(it, nil, &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 3, 0}, Message: "spool read failed", Cause: err}, nil)
			continue
		}
		env := &delivery.Envelope{From: it.meta.Sender, Params: it.meta.Params, OwnReport: it.meta.Source == pipeline.SourceDSN,
			Rcpts: make([]delivery.Rcpt, len(it.rcpts)), MsgID: it.meta.ID, Tags: it.meta.Tags, Source: it.meta.Source}
		for i, r := range it.rcpts {
			env.Rcpts[i] = delivery.Rcpt{Addr: r.Address, Params: r.Params, Attempt: r.Attempts + 1}
		}
		if lease != nil {
			retry, _, werr := lease.Wait(q.ctx, idle)
			if werr != nil { // stopping
				q.requeue(it)
				q.retire(d)
				return
			}
			if !retry.IsZero() {
				// The lease's source is suspended for the site, over a
				// lowered connection limit, out of warm-up volume or its
				// rate's next turn is past the idle timeout: that holds
				// this source, not the pool. Acquire (which checks all
				// four, with the same idle timeout) picks another source,
				// or holds the destination until the earliest time one is
				// free. Holding it here until this source's retry kept
				// every message of the pool waiting while other sources
				// were free.
				closeConn()
				q.requeue(it)
				continue
			}
		}
		remote := conn.Remote()
		start := time.Now()
		res, err := conn.Deliver(q.ctx, env, data)
		q.countAttempt(attemptResult(err), time.Since(start))
		q.countTLS(&remote)
		sent++
		if lease != nil {
			lease.Observe(failures(res, err), &remote)
		}
		q.complete(it, res, err, &remote)
		if err != nil {
			closeConn()
		}
	}
}

// acquireSlot takes a connection slot, waiting for one when all
// MaxConnections are in use (and then waking an idle worker to give its
// slot up). It reports false when the queue stops first.
func (q *Queue) acquireSlot() bool {
	select {
	case q.sem <- struct{}{}:
		return true
	default:
	}
	q.slotWaiters.Add(1)
	defer q.slotWaiters.Add(-1)
	select {
	case q.yield <- struct{}{}:
	default:
	}
	select {
	case q.sem <- struct{}{}:
		return true
	case <-q.ctx.Done():
		return false
	}
}

// dial opens a connection for d, from eg's source when shaping is on and
// the dialer can.
func (q *Queue) dial(d *dest, eg delivery.Egress, shaped bool) (Conn, error) {
	if ed, ok := q.dialer.(EgressDialer); ok && (shaped || d.tls != tlsAny) {
		return ed.DialFrom(q.ctx, d.route, d.domain, eg)
	}
	return q.dialer.Dial(q.ctx, d.route, d.domain)
}

func orDur(v, def time.Duration) time.Duration {
	if v == 0 {
		return def
	}
	return v
}

// failures lists the replies of an attempt that were failures, for the
// shaping rules.
func failures(res []delivery.Result, err error) []*pipeline.Response {
	var out []*pipeline.Response
	if err != nil {
		out = append(out, replyOf(err))
	}
	for _, r := range res {
		if r.Err != nil {
			out = append(out, replyOf(r.Err))
		}
	}
	return out
}

// replyOf is the next hop's own reply in err (code, enhanced code, its
// text alone), or the reply Sluice recorded for a local failure.
func replyOf(err error) *pipeline.Response {
	var re *delivery.ReplyError
	if errors.As(err, &re) {
		r := &pipeline.Response{Code: re.Code, Text: re.Text}
		if re.Enhanced != (pipeline.EnhancedCode{}) {
			r.Enhanced = re.Enhanced.String()
		}
		return r
	}
	return pipeline.ResponseOf(err)
}

// shapeHold puts it, and every item ready for d, back into the timer heap
// until retry: shaping holds d (the site is suspended, its rate or the
// source's warm-up volume is used up, or its connections are taken). No
// attempt is counted and no event written: the shaping change has its own
// event. The first hold of a site is logged per reason, sampled.
func (q *Queue) shapeHold(d *dest, it *item, retry time.Time, reason string) {
	if ok, n := q.sample.Allow("shaping:" + reason); ok {
		q.log.Info("delivery held by shaping", "site", d.site, "pool", d.route.Pool, "reason", reason, "until", retry, "similar_suppressed", n)
	}
	q.mu.Lock()
	items := append([]*item{it}, q.takeReady(d)...)
	for _, x := range items {
		x.due = nanos(retry)
		q.wait(x)
	}
	q.mu.Unlock()
	q.kick()
}

// retire ends a worker that took no item (shutdown while waiting for a
// connection slot).
func (q *Queue) retire(d *dest) {
	q.mu.Lock()
	d.active--
	q.mu.Unlock()
}

// spoolHold is how long a delivery waits when the spool cannot record
// outcomes before it is looked at again.
const spoolHold = 5 * time.Second

// holdForSpool puts it back, due in spoolHold, without an attempt: while
// the spool cannot record outcomes (below its write floor, read-only or
// failed: spool.Writable), a delivery made now could not be recorded and
// would be made again later, a duplicate for the recipient. No attempt is
// counted. The first hold of a stretch is logged.
func (q *Queue) holdForSpool(it *item) {
	if !q.spoolHeld.Swap(true) {
		q.log.Warn("the spool cannot record delivery outcomes (disk full or spool failed); delivery is held until it can", "recheck_every", spoolHold)
	}
	q.mu.Lock()
	it.due = q.o.Now().Add(spoolHold).UnixNano()
	q.wait(it)
	q.mu.Unlock()
	q.kick()
}

func (q *Queue) requeue(it *item) {
	q.mu.Lock()
	it.dest.ready = append([]*item{it}, it.dest.ready...)
	q.mu.Unlock()
}

func (q *Queue) drain(d *dest) []*item {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.takeReady(d)
}

// backoff returns the delay before attempt n+1 after n failed attempts.
func (q *Queue) backoff(n int) time.Duration {
	d := float64(q.o.RetryInitial) * math.Pow(q.o.RetryFactor, float64(n-1))
	if d > float64(q.o.RetryMax) {
		d = float64(q.o.RetryMax)
	}
	if j := q.o.RetryJitter; j > 0 {
		d *= 1 + j*(2*rand.Float64()-1)
	}
	if d < float64(time.Millisecond) {
		d = float64(time.Millisecond)
	}
	return time.Duration(d)
}

// rcptQueue is the queue name of r in events: its route's, for its own
// domain (a site's queue holds several domains).
func rcptQueue(r *spool.Recipient) string {
	if r.Route == nil {
		return r.Domain
	}
	return r.Route.QueueName(r.Domain)
}

func (q *Queue) event(typ string, m *spool.Meta, r *spool.Recipient, queueName string, attempt int) *pipeline.Event {
	return &pipeline.Event{
		Type: typ, MessageID: m.ID, Recipient: r.Address, Sender: m.Sender, Source: m.Source,
		Tenant: m.Tenant, Queue: queueName, Attempt: attempt, Tags: m.Tags, Metadata: m.Meta, Size: m.Size,
		RequireTLS: m.Params.RequireTLS,
	}
}

// rcptResult is recipient i's error, reply and whether the next hop
// took on its DSN, of an attempt whose transaction ended with err and
// per-recipient results res (nil: err applies to every recipient): a
// recipient's own reply wins (a 5xx at RCPT stays permanent even if the
// connection broke later); otherwise the transaction's error applies.
func rcptResult(i int, res []delivery.Result, err error) (error, *pipeline.Response, bool) {
	if i < len(res) && (res[i].Err != nil || err == nil) {
		return res[i].Err, res[i].Reply, res[i].DSN
	}
	return err, nil, false
}

// complete records the outcome of one attempt for an item. res may be nil
// (then err applies to every recipient). An operator's bounce or cancel
// (it.by set, control.go) comes here too, with errAdminBounce or
// errCancelled and no attempt: then a failure to commit is returned, and
// the caller puts the item back; otherwise the item is retried later.
func (q *Queue) complete(it *item, res []delivery.Result, err error, remote *pipeline.Remote) error {
	// An operator's action (settle) hands loaded items, so only a
	// delivery attempt's item can fail here.
	if herr := q.hydrate(it); herr != nil {
		q.unreadable(it, herr)
		return herr
	}
	now := q.o.Now()
	m := it.meta
	b := q.sp.NewBatch()
	if it.by != "" {
		b.NoSuppression()
	}
	var (
		failed []Failure
		notes  []dsn.Notice // every outcome, for the DSNs it may owe (Notifier)
		retry  []*spool.Recipient
		done   int
		// outcomes are counted once committed (countOutcomes).
		outcomes = make([]*pipeline.Event, 0, len(it.rcpts))
	)
	remoteHost := ""
	if remote != nil {
		remoteHost = remote.Host
	}
	for i, r := range it.rcpts {
		rerr, reply, hopDSN := rcptResult(i, res, err)
		attempt := r.Attempts + 1
		if it.by != "" {
			attempt = r.Attempts // no attempt made
		}
		ev := q.event("", m, r, rcptQueue(r), attempt)
		if it.by != "" {
			ev.Metadata = withAdmin(m.Meta, it.by)
		}
		if remote != nil && remote.Host != "" {
			rm := *remote
			ev.Remote = &rm
		}
		switch {
		case rerr == errCancelled:
			ev.Type = pipeline.EventCancelled
			ev.Response = pipeline.ResponseOf(rerr)
			b.DeleteRecipient(m.ID, r.Idx)
			done++
		case rerr == nil:
			ev.Type = pipeline.EventDelivered
			// The next hop's own reply to the end of data.
			ev.Response = reply
			if ev.Response == nil {
				ev.Response = &pipeline.Response{Code: 250, Enhanced: "2.0.0", Text: "OK"}
			}
			b.DeleteRecipient(m.ID, r.Idx)
			notes = append(notes, dsn.Notice{Outcome: dsn.Delivered, Rcpt: r, Reply: ev.Response, Remote: remoteHost, Time: now, HopDSN: hopDSN})
			done++
		case !pipeline.IsTemporary(rerr):
			ev.Type = pipeline.EventBounced
			ev.Response = pipeline.ResponseOf(rerr)
			if rerr == errAdminBounce {
				ev.BounceClass = bounce.PolicyRelated // an operator's, not the reply's
			} else {
				ev.BounceClass = q.o.Bounces.ClassifyResponse(ev.Response)
			}
			b.DeleteRecipient(m.ID, r.Idx)
			failed = append(failed, Failure{Recipient: r.Address, Reply: ev.Response, Err: rerr, Remote: remoteHost, Time: now})
			notes = append(notes, dsn.Notice{Outcome: dsn.Failed, Rcpt: r, Err: rerr, Reply: ev.Response, Remote: remoteHost, Time: now})
			done++
		case now.Sub(m.Received) >= q.o.QueueLifetime:
			ev.Type = pipeline.EventExpired
			ev.Response = pipeline.ResponseOf(rerr)
			ev.BounceClass = q.o.Bounces.ClassifyExpired(ev.Response)
			b.DeleteRecipient(m.ID, r.Idx)
			failed = append(failed, Failure{Recipient: r.Address, Expired: true, Reply: ev.Response, Err: rerr, Remote: remoteHost, Time: now})
			notes = append(notes, dsn.Notice{Outcome: dsn.Failed, Rcpt: r, Err: rerr, Reply: ev.Response, Expired: true, Remote: remoteHost, Time: now})
			done++
		default:
			ev.Type = pipeline.EventDeferred
			ev.Response = pipeline.ResponseOf(rerr)
			ev.BounceClass = q.o.Bounces.ClassifyResponse(ev.Response)
			nr := *r
			nr.Attempts = attempt
			nr.NextAttempt = now.Add(q.backoff(attempt))
			if exp := m.Received.Add(q.o.QueueLifetime); nr.NextAttempt.After(exp) {
				nr.NextAttempt = exp
			}
			nr.LastReply = ev.Response
			_ = b.PutRecipient(&nr)
			retry = append(retry, &nr)
			// The notifier may mark nr warned and put it again in b.
			notes = append(notes, dsn.Notice{Outcome: dsn.Delayed, Rcpt: &nr, Err: rerr, Reply: ev.Response, Remote: remoteHost,
				Time: now, RetryUntil: m.Received.Add(q.o.QueueLifetime)})
		}
		b.AddEvent(ev)
		outcomes = append(outcomes, ev)
	}

	var (
		bMeta  *spool.Meta
		bRcpts []*spool.Recipient
	)
	switch {
	case m.Sender == "":
		// Never a report to the null sender.
	case q.notifier != nil && len(notes) > 0:
		bMeta, bRcpts = q.notifier.Notify(q.ctx, b, m, func() ([]byte, error) { return q.sp.Body(m.ID) }, notes)
	case len(failed) > 0:
		bMeta, bRcpts = q.makeBounce(b, m, failed)
	}

	// When this item settles the message's last unsettled recipients (the
	// usual case: one destination), the message is deleted in the same
	// batch as their outcomes: one commit instead of two, and the batch is
	// atomic, so a crash still never leaves a recipient without its
	// message. Only enqueue adds to remaining, and only for a new message,
	// so nothing can raise it before the commit below.
	q.mu.Lock()
	mr := q.msgs.get(it.msg)
	whole := done > 0 && mr != nil && mr.remaining == int32(done)
	q.mu.Unlock()
	if whole {
		b.DeleteMessage(m.ID)
	}
	// The outcome lines are logged once the outcomes are committed, so
	// that the log never says a recipient was cancelled or bounced when
	// the spool refused it (and it stays queued). A delivery attempt's
	// are logged even then: the attempt was made.
	logOutcomes := func() {
		for i, ev := range outcomes {
			rerr, _, _ := rcptResult(i, res, err)
			q.logOutcome(ev, it.rcpts[i], now.Sub(m.Received), rerr)
		}
	}
	if cerr := b.Commit(false); cerr != nil {
		// The outcome is lost but the spool still holds the recipients as
		// they were: retry the whole item later. An operator's action
		// (settle) stops instead, and its caller reports that.
		if it.by != "" {
			q.log.Warn("cannot record an operator's action on a message; its recipients stay queued as they were",
				"msgid", m.ID, "result", outcomes[0].Type, "recipients", len(outcomes), "by", it.by, "err", cerr)
			return cerr
		}
		logOutcomes()
		if ok, n := q.sample.Allow("outcome"); ok {
			q.log.Error("cannot record delivery outcome; will retry", "msgid", m.ID, "err", cerr, "similar_suppressed", n)
		}
		q.mu.Lock()
		it.due = now.Add(q.o.RetryInitial).UnixNano()
		q.wait(it)
		q.mu.Unlock()
		q.kick()
		return cerr
	}
	logOutcomes()
	// Count settled recipients only once their outcome is committed. When
	// other items of the message settled at the same time (whole was
	// false), the last of them deletes the message in a later batch: WAL
	// order then guarantees the message outlives every outcome batch of its
	// recipients, so a crash can leave a message without recipients
	// (collected at start), never a recipient without its message.
	q.countOutcomes(outcomes)
	q.mu.Lock()
	last := q.settled(it.msg, done)
	q.mu.Unlock()
	if last && !whole {
		db := q.sp.NewBatch()
		db.DeleteMessage(m.ID)
		if err := db.Commit(false); err != nil {
			q.log.Warn("cannot delete a settled message; it is collected at the next start", "msgid", m.ID, "err", err)
		}
	}
	if bMeta != nil {
		q.Enqueue(bMeta, bRcpts)
	}
	if len(retry) > 0 {
		nit := &item{msg: it.msg, id: it.id, dest: it.dest, loaded: &loaded{meta: m, rcpts: retry}, due: nanos(retry[0].NextAttempt)}
		q.mu.Lock()
		for _, r := range retry {
			it.dest.share(r)
		}
		q.schedule(nit, now)
		q.mu.Unlock()
	}
	return nil
}

// makeBounce builds the DSN for failed recipients of m and adds it to b.
func (q *Queue) makeBounce(b *spool.Batch, m *spool.Meta, failed []Failure) (*spool.Meta, []*spool.Recipient) {
	if m.Sender == "" || q.bounce == nil || len(failed) == 0 {
		return nil, nil
	}
	data, err := q.sp.Body(m.ID)
	if err != nil {
		q.log.Error("cannot read message for its bounce", "msgid", m.ID, "err", err)
		data = nil
	}
	return q.bounce.Bounce(q.ctx, b, m, data, failed)
}
