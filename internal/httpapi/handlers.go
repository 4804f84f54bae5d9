package httpapi

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	gomail "github.com/emersion/go-message/mail"

	"github.com/sluice-mta/sluice/internal/apikey"
	"github.com/sluice-mta/sluice/internal/relay"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// rcptAnswer is one recipient in a 202 answer (and in a 422 answer when
// every recipient was refused).
type rcptAnswer struct {
	Email    string `json:"email"`
	Status   string `json:"status"` // queued, rejected, suppressed, discarded
	Code     int    `json:"code,omitempty"`
	Enhanced string `json:"enhanced,omitempty"`
	Message  string `json:"message,omitempty"`
}

// messageAnswer is the 202 answer of POST /v1/messages and /raw.
type messageAnswer struct {
	ID         string       `json:"id"`
	Recipients []rcptAnswer `json:"recipients"`
}

// item is one message on its way through the pipeline.
type item struct {
	from  string   // envelope sender
	rcpts []string // envelope recipients, without duplicates
	tags  []string
	meta  map[string]string
	// params are the MAIL FROM parameters the request asked for
	// (require_tls); on_mail sees them.
	params pipeline.MailParams
	// fromHeader are the From header field values of a raw message,
	// checked by the relay's sender rule with the envelope sender.
	fromHeader []string
	rawField   string // "message" or "message_base64"
	// build makes the message once the transaction exists; buf is the
	// pooled buffer it may use (released after the relay committed).
	build func(txn *pipeline.Txn, buf *bytes.Buffer) (*pipeline.Message, *apiError)

	txn     *relay.Txn
	id      string // message id, once the transaction began
	buf     *bytes.Buffer
	msg     *pipeline.Message
	results []rcptAnswer // one per rcpts entry
	accIdx  []int        // msg.Recipients[j] is rcpts[accIdx[j]]
	err     *apiError    // the message was refused as a whole
	done    bool         // the relay accepted it (BeforeCommit ran or a discard)
}

// checkSenders enforces the identity's allowed sender domains on the
// envelope sender (reported as field) and the header From of a raw
// message.
func (it *item) checkSenders(id *pipeline.Identity, field string) *apiError {
	if e := checkSender(id, field, it.from); e != nil {
		return e
	}
	if it.rawField == "" {
		return nil // composed: the relay checks the From it is given
	}
	if err := relay.CheckFromHeader(id, it.fromHeader); err != nil {
		var se *relay.SenderError
		msg := err.Error()
		if errors.As(err, &se) {
			msg = credential(id) + " may not send with this From header: " + se.Err.Message
		}
		return errf(http.StatusForbidden, codeSenderNotAllowed, it.rawField, "%s", msg)
	}
	return nil
}

func (it *item) release() {
	putBuf(it.buf)
	it.buf = nil
}

// stage runs on_mail and on_rcpt for each recipient through the relay's
// transaction, then builds the message. A refused recipient is reported
// per recipient (the relay records it); with none left, the item fails
// with the first recipient's refusal.
func (s *Server) stage(ctx context.Context, sess *relay.Session, it *item) {
	t, err := sess.BeginWith(ctx, it.from, it.params, it.tags, it.meta)
	it.txn, it.id = t, t.ID()
	if err != nil {
		it.err = fromPipeline(err)
		return
	}
	it.results = make([]rcptAnswer, len(it.rcpts))
	var first error
	for i, addr := range it.rcpts {
		if _, err := t.Rcpt(ctx, addr); err != nil {
			rep := pipeline.Reply(err)
			status := relay.StatusRejected
			if relay.IsSuppressed(err) {
				status = relay.StatusSuppressed
			}
			it.results[i] = rcptAnswer{Email: addr, Status: status, Code: rep.Code, Enhanced: rep.Enhanced.String(), Message: rep.Message}
			if first == nil {
				first = err
			}
			continue
		}
		it.accIdx = append(it.accIdx, i)
		it.results[i] = rcptAnswer{Email: addr, Status: relay.StatusQueued}
	}
	if len(t.T.Recipients) == 0 {
		t.Abort() // each recipient's refusal is recorded
		it.err = fromPipeline(first)
		return
	}
	it.buf = getBuf()
	msg, e := it.build(t.T, it.buf)
	if e != nil {
		t.Refuse(ctx, 0, pipeline.ErrInternal)
		it.err = e
		return
	}
	it.msg = msg
}

// fill records the relay's per-recipient outcome.
func (it *item) fill(rc *relay.Receipt) {
	if rc == nil {
		return
	}
	for j, rr := range rc.Recipients {
		i := -1
		if j < len(it.accIdx) && it.rcpts[it.accIdx[j]] == rr.Address {
			i = it.accIdx[j]
		} else {
			for k, a := range it.rcpts {
				if a == rr.Address {
					i = k
				}
			}
		}
		if i < 0 {
			continue
		}
		ra := rcptAnswer{Email: it.rcpts[i], Status: rr.Status}
		if rr.Err != nil {
			ra.Code, ra.Enhanced, ra.Message = rr.Err.Code, rr.Err.EnhancedOrDefault().String(), rr.Err.Message
		}
		it.results[i] = ra
	}
}

func (it *item) answer() []byte {
	b, _ := json.Marshal(messageAnswer{ID: it.id, Recipients: it.results})
	return b
}

// failure is the error answer of a refused item.
func (it *item) failure() answer {
	return errorAnswer(it.err, it.id, it.reported())
}

// reported returns the recipients to show: all of them for an accepted
// message; for a refused one, those refused individually (the others
// share the message's error).
func (it *item) reported() []rcptAnswer {
	var out []rcptAnswer
	for _, r := range it.results {
		if r.Status != "" && (it.err == nil || r.Status == relay.StatusRejected || r.Status == relay.StatusSuppressed) {
			out = append(out, r)
		}
	}
	return out
}

// submitFailed maps a relay refusal of the item (the relay has logged and
// recorded it).
func (it *item) submitFailed(rc *relay.Receipt, err error) {
	it.err = fromPipeline(err)
	it.fill(rc)
}

// sendOne runs one item through the pipeline and the relay.
func (s *Server) sendOne(ctx context.Context, r *http.Request, k *caller, it *item, id *idem) answer {
	sess, e := s.openConn(ctx, r, k)
	if e != nil {
		return errorAnswer(e, "", nil)
	}
	if e := it.checkSenders(sess.Conn.Identity, "from"); e != nil {
		return errorAnswer(e, "", nil)
	}
	if e := k.checkRcpts(it, "to"); e != nil {
		return errorAnswer(e, "", nil)
	}
	s.stage(ctx, sess, it)
	defer it.release()
	if it.err != nil {
		return it.failure()
	}
	var stored []byte
	o := relay.CommitOptions{}
	if id != nil {
		o.BeforeCommit = func(b *spool.Batch, acc *relay.Accepted) error {
			it.fill(acc.Receipt)
			stored = it.answer()
			return b.PutIdempotency(id.key, id.value(http.StatusAccepted, stored, nil), id.exp)
		}
	}
	rc, err := it.txn.Commit(ctx, it.msg, o)
	if err != nil {
		it.submitFailed(rc, err)
		return it.failure()
	}
	it.fill(rc)
	if stored != nil {
		return answer{status: http.StatusAccepted, body: stored}
	}
	ans := it.answer()
	if id != nil {
		// Nothing was written with the message: store the answer alone.
		s.storeAnswer(id, ans, true)
	}
	return answer{status: http.StatusAccepted, body: ans}
}

// storeAnswer stores an idempotency answer outside a message's batch.
func (s *Server) storeAnswer(id *idem, ans []byte, sync bool) {
	b := s.sp.NewBatch()
	if err := b.PutIdempotency(id.key, id.value(http.StatusAccepted, ans, nil), id.exp); err != nil {
		s.log.Error("cannot store idempotency answer", "key", id.key, "err", err)
		return
	}
	if err := b.Commit(sync); err != nil {
		s.log.Error("cannot store idempotency answer", "key", id.key, "err", err)
	}
}

// ---- POST /v1/messages ----

// sendRequest authenticates a send-scope request and decodes its JSON body
// into v. When it fails it has answered the client and returns ok false;
// otherwise the caller owns body and returns it with putBuf.
func (s *Server) sendRequest(w http.ResponseWriter, r *http.Request, v any) (k *caller, body *bytes.Buffer, ok bool) {
	k, e := s.authenticate(r, apikey.ScopeSend)
	if e == nil {
		body, e = s.readBody(w, r)
		if e == nil {
			if e = decodeJSON(body.Bytes(), v); e != nil {
				putBuf(body)
			}
		}
	}
	if e != nil {
		s.fail(w, e)
		return nil, nil, false
	}
	return k, body, true
}

func (s *Server) postMessage(w http.ResponseWriter, r *http.Request) {
	var req messageRequest
	k, body, ok := s.sendRequest(w, r, &req)
	if !ok {
		return
	}
	defer putBuf(body)
	v, e := validate("", &req)
	if e != nil {
		s.fail(w, e)
		return
	}
	s.idempotent(w, r, k, body.Bytes(), func(id *idem) answer {
		return s.sendOne(r.Context(), r, k, s.composedItem(v), id)
	})
}

// composedItem is the item of a JSON message.
func (s *Server) composedItem(v *validMessage) *item {
	return &item{
		from: canonicalAddr(v.from.Addr), rcpts: v.rcpts, tags: v.req.Tags, meta: v.req.Metadata,
		params: pipeline.MailParams{RequireTLS: v.req.RequireTLS},
		build: func(txn *pipeline.Txn, buf *bytes.Buffer) (*pipeline.Message, *apiError) {
			txn.Track = v.req.track().Merge(txn.Track) // stages (on_mail, on_rcpt) win over the request
			h, off, err := compose(buf, v, txn.ID, s.host, txn.Received)
			if err != nil {
				s.log.Error("cannot compose message", "msgid", txn.ID, "err", err)
				return nil, errInternal
			}
			return &pipeline.Message{Txn: txn, Header: h.Header, Body: buf.Bytes()[off:]}, nil
		},
	}
}

// ---- POST /v1/messages/raw ----

func (s *Server) postRaw(w http.ResponseWriter, r *http.Request) {
	var req rawRequest
	k, body, ok := s.sendRequest(w, r, &req)
	if !ok {
		return
	}
	defer putBuf(body)
	data := getBuf()
	defer putBuf(data)
	it, e := s.rawItem(&req, data)
	if e != nil {
		s.fail(w, e)
		return
	}
	s.idempotent(w, r, k, body.Bytes(), func(id *idem) answer {
		return s.sendOne(r.Context(), r, k, it, id)
	})
}

// rawItem validates a raw request; the normalised message goes to data.
func (s *Server) rawItem(req *rawRequest, data *bytes.Buffer) (*item, *apiError) {
	if strings.TrimSpace(req.From) == "" {
		return nil, missingField("from")
	}
	from, e := envelopeAddr("from", req.From)
	if e != nil {
		return nil, e
	}
	var rcpts []string
	seen := map[string]bool{}
	for i, t := range req.To {
		a, e := envelopeAddr(idx("to", i), t)
		if e != nil {
			return nil, e
		}
		local, domain, _ := pipeline.SplitAddress(a)
		if !seen[local+"@"+domain] {
			seen[local+"@"+domain] = true
			rcpts = append(rcpts, a)
		}
	}
	if len(rcpts) == 0 {
		return nil, missingField("to")
	}
	if len(rcpts) > maxRecipients {
		return nil, badField("to", "at most %d recipients per message", maxRecipients)
	}
	if e := checkTagsMeta("", req.Tags, req.Metadata); e != nil {
		return nil, e
	}
	var raw []byte
	switch {
	case req.Message != nil && req.MessageBase64 != nil:
		return nil, badField("message", "give message or message_base64, not both")
	case req.Message != nil:
		raw = bytesOf(*req.Message) // read only, by normalizeRaw
	case req.MessageBase64 != nil:
		var err error
		if raw, err = base64.StdEncoding.DecodeString(*req.MessageBase64); err != nil {
			return nil, badField("message_base64", "message_base64 is not valid base64: %v", err)
		}
	default:
		return nil, missingField("message")
	}
	data.Grow(len(raw) + len(raw)/16 + 2)
	norm, e := normalizeRaw(data.AvailableBuffer(), raw)
	if e != nil {
		if req.MessageBase64 != nil {
			e.Field = "message_base64"
		}
		return nil, e
	}
	data.Write(norm)
	field := "message"
	if req.MessageBase64 != nil {
		field = "message_base64"
	}
	parsed, err := pipeline.ParseMessage(nil, data.Bytes())
	if err != nil || parsed.Header.Len() == 0 {
		return nil, badField(field, "the message has no valid header section (fields, then an empty line, then the body)")
	}
	// A mail loop: the message has passed as many MTAs as an SMTP
	// listener accepts by default (RFC 5321 section 6.3).
	if n := len(parsed.Header.Values("Received")); n >= pipeline.DefaultMaxHops {
		return nil, badField(field, "the message carries %d Received fields (at most %d): a mail loop?", n, pipeline.DefaultMaxHops-1)
	}
	if hfrom, err := gomail.ParseAddressList(parsed.Header.Get("From")); err != nil || len(hfrom) == 0 {
		return nil, badField(field, "the message has no valid From header field")
	}
	host := s.host
	return &item{
		from: from, rcpts: rcpts, tags: req.Tags, meta: req.Metadata, fromHeader: parsed.Header.Values("From"), rawField: field,
		params: pipeline.MailParams{RequireTLS: req.RequireTLS},
		build: func(txn *pipeline.Txn, _ *bytes.Buffer) (*pipeline.Message, *apiError) {
			msg := parsed
			msg.Txn = txn
			// As a submission server (RFC 6409 section 8): drop Bcc, add
			// Date and Message-ID when missing.
			msg.Header.Del("Bcc")
			if !msg.Header.Has("Date") {
				msg.Header.Add("Date", txn.Received.Format(time.RFC1123Z))
			}
			if !msg.Header.Has("Message-Id") {
				msg.Header.Add("Message-Id", "<"+txn.ID+"@"+host+">")
			}
			return msg, nil
		},
	}, nil
}

// ---- POST /v1/messages/batch ----

// batchItem is one message's result in a batch answer.
type batchItem struct {
	Status     int          `json:"status"`
	ID         string       `json:"id,omitempty"`
	Recipients []rcptAnswer `json:"recipients,omitempty"`
	Error      *apiError    `json:"error,omitempty"`
}

// batchAnswer is the answer of POST /v1/messages/batch.
type batchAnswer struct {
	Accepted int         `json:"accepted"`
	Failed   int         `json:"failed"`
	Results  []batchItem `json:"results"`
	Error    *apiError   `json:"error,omitempty"` // when none was accepted: the first failure
}

var errOutcomeUnknown = errf(http.StatusServiceUnavailable, codeOutcomeUnknown, "",
	"this message was not accepted, and why was lost in a restart; send it again with a new Idempotency-Key")

// renderBatch builds the batch answer. With pending, messages the relay
// has not decided yet are shown as not accepted (errOutcomeUnknown): that
// is the partial answer stored with the first committed message.
func renderBatch(items []*item, pending bool) (int, []byte, *apiError) {
	a := batchAnswer{Results: make([]batchItem, len(items))}
	var first *apiError
	for i, it := range items {
		var bi batchItem
		bi.ID = it.id
		bi.Recipients = it.reported()
		switch {
		case it.done:
			bi.Status = http.StatusAccepted
			a.Accepted++
		case it.err != nil:
			bi.Status, bi.Error = it.err.Status, it.err
		case pending:
			bi.Status, bi.Error, bi.Recipients = errOutcomeUnknown.Status, errOutcomeUnknown, nil
		default:
			bi.Status, bi.Error = errInternal.Status, errInternal
		}
		if bi.Error != nil {
			a.Failed++
			if first == nil {
				first = bi.Error
			}
		}
		a.Results[i] = bi
	}
	status := http.StatusAccepted
	if a.Accepted == 0 && first != nil {
		status, a.Error = first.Status, first
	}
	b, _ := json.Marshal(a)
	return status, b, first
}

func (s *Server) postBatch(w http.ResponseWriter, r *http.Request) {
	var req batchRequest
	k, body, ok := s.sendRequest(w, r, &req)
	if !ok {
		return
	}
	defer putBuf(body)
	switch {
	case len(req.Messages) == 0:
		s.fail(w, missingField("messages"))
		return
	case len(req.Messages) > maxBatch:
		s.fail(w, badField("messages", "at most %d messages per batch", maxBatch))
		return
	}
	items := make([]*item, len(req.Messages))
	for i := range req.Messages {
		v, e := validate(idx("messages", i)+".", &req.Messages[i])
		if e != nil {
			items[i] = &item{err: e}
			continue
		}
		items[i] = s.composedItem(v)
	}
	s.idempotent(w, r, k, body.Bytes(), func(id *idem) answer {
		return s.sendBatch(r.Context(), r, k, items, id)
	})
}

// sendBatch runs every valid item through on_mail and on_rcpt, then
// submits the survivors with one synced commit (relay.CommitBatch).
//
// With an Idempotency-Key, the first message that commits stores a
// partial answer in the same batch: every submitted message marked
// pending. Which of them were committed cannot be known then (the relay
// reports refusals after the commit), so the final answer replaces the
// record right after, without a sync of its own; if a crash loses it,
// a replay completes the partial answer from the messages' event history,
// which was committed in the same batch as the messages.
func (s *Server) sendBatch(ctx context.Context, r *http.Request, k *caller, items []*item, id *idem) answer {
	sess, e := s.openConn(ctx, r, k)
	if e != nil {
		return errorAnswer(e, "", nil)
	}
	var (
		txns []*relay.Txn
		accs []*relay.Accepted
		sub  []*item
		pend []int
	)
	defer func() {
		for _, it := range items {
			it.release()
		}
	}()
	for i, it := range items {
		if it.err != nil {
			continue
		}
		if e := it.checkSenders(sess.Conn.Identity, idx("messages", i)+".from"); e != nil {
			it.err = e
			continue
		}
		if e := k.checkRcpts(it, idx("messages", i)+".to"); e != nil {
			it.err = e
			continue
		}
		s.stage(ctx, sess, it)
		if it.err != nil {
			continue
		}
		acc, err := it.txn.Prepare(ctx, it.msg, relay.CommitOptions{})
		if err != nil {
			it.submitFailed(receiptOf(acc), err)
			continue
		}
		txns = append(txns, it.txn)
		accs = append(accs, acc)
		sub = append(sub, it)
		pend = append(pend, i)
	}
	o := relay.CommitOptions{}
	if id != nil {
		first := true
		o.BeforeCommit = func(b *spool.Batch, acc *relay.Accepted) error {
			if !first {
				return nil
			}
			first = false
			_, partial, _ := renderBatch(items, true)
			return b.PutIdempotency(id.key, id.value(http.StatusAccepted, partial, pend), id.exp)
		}
	}
	var results []relay.BatchResult
	if len(accs) > 0 {
		results = s.relay.CommitBatch(ctx, txns, accs, o)
	}
	for j, res := range results {
		it := sub[j]
		if res.Err != nil {
			it.submitFailed(res.Receipt, res.Err)
			continue
		}
		it.fill(res.Receipt)
		it.done = true
	}
	status, ans, first := renderBatch(items, false)
	if id != nil && status == http.StatusAccepted {
		s.storeAnswer(id, ans, false)
	}
	a := answer{status: status, body: ans}
	if status != http.StatusAccepted && first != nil {
		a.retryAfter = first.retryAfter()
	}
	return a
}

func receiptOf(acc *relay.Accepted) *relay.Receipt {
	if acc == nil {
		return nil
	}
	return acc.Receipt
}

// completeBatch rebuilds a partial batch answer (see sendBatch): a
// pending message whose acceptance events are in its history was
// accepted; one without was not.
func (s *Server) completeBatch(rec *idemRecord) ([]byte, error) {
	var a batchAnswer
	if err := json.Unmarshal(rec.Answer, &a); err != nil {
		return nil, err
	}
	for _, i := range rec.Pending {
		if i < 0 || i >= len(a.Results) || a.Results[i].ID == "" {
			continue
		}
		bi := &a.Results[i]
		evs, err := s.sp.History(bi.ID)
		if err != nil {
			return nil, err
		}
		var rcpts []rcptAnswer
		seen := map[string]bool{}
		accepted := false
		for _, ev := range evs {
			if ev.Recipient == "" || seen[ev.Recipient] {
				continue
			}
			ra := rcptAnswer{Email: ev.Recipient}
			switch ev.Type {
			case pipeline.EventReceived:
				ra.Status, accepted = relay.StatusQueued, true
			case pipeline.EventDiscarded:
				ra.Status, accepted = relay.StatusDiscarded, true
			case pipeline.EventRejected, pipeline.EventSuppressed:
				ra.Status = relay.StatusRejected
				if ev.Type == pipeline.EventSuppressed {
					ra.Status = relay.StatusSuppressed
				}
				if ev.Response != nil {
					ra.Code, ra.Enhanced, ra.Message = ev.Response.Code, ev.Response.Enhanced, ev.Response.Text
				}
			default:
				continue
			}
			seen[ev.Recipient] = true
			rcpts = append(rcpts, ra)
		}
		if accepted {
			bi.Status, bi.Error, bi.Recipients = http.StatusAccepted, nil, rcpts
		}
	}
	a.Accepted, a.Failed, a.Error = 0, 0, nil
	for _, bi := range a.Results {
		if bi.Error != nil {
			a.Failed++
		} else {
			a.Accepted++
		}
	}
	return json.Marshal(a)
}

// ---- GET /v1/admin/keys ----

type keyInfo struct {
	ID      string     `json:"id"`
	Name    string     `json:"name,omitempty"`
	Tenant  string     `json:"tenant"`
	Scopes  []string   `json:"scopes"`
	Senders []string   `json:"senders,omitempty"`
	Created time.Time  `json:"created"`
	Revoked *time.Time `json:"revoked,omitempty"`
}

// adminKeys lists the API keys of the caller's tenant, without hashes.
func (s *Server) adminKeys(w http.ResponseWriter, r *http.Request) {
	k, e := s.authenticate(r, apikey.ScopeAdmin)
	if e != nil {
		s.fail(w, e)
		return
	}
	out := struct {
		Keys []keyInfo `json:"keys"`
	}{Keys: []keyInfo{}}
	for _, x := range s.keys.List() {
		if x.Tenant != k.Tenant {
			continue
		}
		out.Keys = append(out.Keys, keyInfo{ID: x.ID, Name: x.Name, Tenant: x.Tenant, Scopes: x.Scopes,
			Senders: x.Senders, Created: x.Created, Revoked: x.Revoked})
	}
	b, _ := json.Marshal(out)
	s.writeAnswer(w, answer{status: http.StatusOK, body: b})
}
