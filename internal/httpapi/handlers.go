package httpapi

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
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
	Status   string `json:"status"` // queued, rejected, discarded
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
	// authors are the header From addresses of a raw message, checked
	// against the key's allowed sender domains with the envelope sender.
	authors []string
	// build makes the message once the transaction exists; buf is the
	// pooled buffer it may use (released after the relay committed).
	build func(txn *pipeline.Txn, buf *bytes.Buffer) (*pipeline.Message, *apiError)

	txn     *pipeline.Txn
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
	for _, a := range it.authors {
		if e := checkSender(id, "message", a); e != nil {
			e.Message = "this API key may not send with From: " + a
			return e
		}
	}
	return nil
}

func (it *item) release() {
	putBuf(it.buf)
	it.buf = nil
}

// stage runs on_mail and on_rcpt for each recipient, then builds the
// message. A refused recipient is recorded ("rejected" event) and
// reported per recipient; with none left, the item fails with the first
// recipient's refusal.
func (s *Server) stage(ctx context.Context, conn *pipeline.Conn, it *item) {
	txn := &pipeline.Txn{Conn: conn, ID: s.relay.NewID(), Sender: it.from, Received: s.now(), Tags: it.tags, Meta: it.meta}
	it.txn = txn
	if err := s.chain.Mail(ctx, txn); err != nil {
		s.logRefusal("sender refused", err, "conn", conn.ID, "msgid", txn.ID, "from", it.from)
		s.relay.Rejected(ctx, txn, "", err)
		it.err = fromPipeline(err)
		return
	}
	it.results = make([]rcptAnswer, len(it.rcpts))
	var first error
	for i, addr := range it.rcpts {
		r, err := pipeline.NewRecipient(addr)
		if err == nil {
			err = s.chain.Rcpt(ctx, txn, r)
		}
		if err != nil {
			s.logRefusal("recipient refused", err, "conn", conn.ID, "msgid", txn.ID, "rcpt", addr)
			s.relay.Rejected(ctx, txn, addr, err)
			rep := pipeline.Reply(err)
			it.results[i] = rcptAnswer{Email: addr, Status: relay.StatusRejected, Code: rep.Code, Enhanced: rep.Enhanced.String(), Message: rep.Message}
			if first == nil {
				first = err
			}
			continue
		}
		txn.Recipients = append(txn.Recipients, r)
		it.accIdx = append(it.accIdx, i)
		it.results[i] = rcptAnswer{Email: addr, Status: relay.StatusQueued}
	}
	if len(txn.Recipients) == 0 {
		it.err = fromPipeline(first)
		return
	}
	it.buf = getBuf()
	msg, e := it.build(txn, it.buf)
	if e != nil {
		it.err = e
		return
	}
	msg.Header.Add("Received", receivedValue(txn, s.host))
	it.msg = msg
}

// receivedValue is the trace field of an HTTP submission, as SMTP
// submissions get one: the client address, us, the protocol (with the
// key id as the authenticated identity) and the message id.
func receivedValue(txn *pipeline.Txn, host string) string {
	c := txn.Conn
	proto := "HTTP"
	if c.TLS != "" {
		proto = "HTTPS"
	}
	var b strings.Builder
	b.Grow(128)
	b.WriteString("from [")
	b.WriteString(c.RemoteIP.String())
	b.WriteString("] by ")
	b.WriteString(host)
	b.WriteString(" with ")
	b.WriteString(proto)
	if c.Identity != nil {
		b.WriteString(" (key ")
		b.WriteString(c.Identity.Name)
		b.WriteByte(')')
	}
	b.WriteString(" id ")
	b.WriteString(txn.ID)
	b.WriteString("; ")
	b.WriteString(txn.Received.Format(time.RFC1123Z))
	return b.String()
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
	b, _ := json.Marshal(messageAnswer{ID: it.txn.ID, Recipients: it.results})
	return b
}

// failure is the error answer of a refused item.
func (it *item) failure() answer {
	id := ""
	if it.txn != nil {
		id = it.txn.ID
	}
	return errorAnswer(it.err, id, it.reported())
}

// reported returns the recipients to show: all of them for an accepted
// message; for a refused one, those refused individually (the others
// share the message's error).
func (it *item) reported() []rcptAnswer {
	var out []rcptAnswer
	for _, r := range it.results {
		if r.Status != "" && (it.err == nil || r.Status == relay.StatusRejected) {
			out = append(out, r)
		}
	}
	return out
}

// submitFailed maps a relay refusal of the item. When the relay recorded
// nothing (on_message refused, or the spool failed), a transaction-level
// "rejected" event is recorded, as the SMTP source does.
func (s *Server) submitFailed(ctx context.Context, it *item, rc *relay.Receipt, err error) {
	it.err = fromPipeline(err)
	it.fill(rc)
	if rc == nil {
		s.relay.Rejected(ctx, it.txn, "", err)
	}
	s.logRefusal("message refused", err, "conn", it.txn.Conn.ID, "msgid", it.txn.ID, "from", it.from, "rcpts", len(it.rcpts))
}

func (s *Server) logAccepted(it *item, rc *relay.Receipt) {
	c := it.txn.Conn
	s.log.Info("message accepted", "conn", c.ID, "msgid", it.txn.ID, "key", c.Identity.Name, "tenant", c.Tenant(),
		"from", it.from, "rcpts", len(it.rcpts), "queued", rc.Queued, "discarded", rc.Discarded,
		"body_size", len(it.msg.Body), "remote_ip", c.RemoteIP)
}

// sendOne runs one item through the pipeline and the relay.
func (s *Server) sendOne(ctx context.Context, r *http.Request, k *apikey.Key, it *item, id *idem) answer {
	conn, e := s.openConn(ctx, r, k)
	if e != nil {
		return errorAnswer(e, "", nil)
	}
	if e := it.checkSenders(conn.Identity, "from"); e != nil {
		return errorAnswer(e, "", nil)
	}
	s.stage(ctx, conn, it)
	defer it.release()
	if it.err != nil {
		return it.failure()
	}
	var stored []byte
	o := relay.Options{}
	if id != nil {
		o.BeforeCommit = func(b *spool.Batch, msg *pipeline.Message, rc *relay.Receipt) error {
			it.fill(rc)
			stored = it.answer()
			return b.PutIdempotency(id.key, id.value(http.StatusAccepted, stored, nil), id.exp)
		}
	}
	rc, err := s.relay.Submit(ctx, it.msg, o)
	if err != nil {
		s.submitFailed(ctx, it, rc, err)
		return it.failure()
	}
	it.fill(rc)
	s.logAccepted(it, rc)
	if stored != nil {
		return answer{status: http.StatusAccepted, body: stored}
	}
	ans := it.answer()
	if id != nil {
		// A discard at on_message commits nothing of the message, so
		// BeforeCommit did not run: store the answer on its own.
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
func (s *Server) sendRequest(w http.ResponseWriter, r *http.Request, v any) (k *apikey.Key, body *bytes.Buffer, ok bool) {
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
		from: v.from.Addr, rcpts: v.rcpts, tags: v.req.Tags, meta: v.req.Metadata,
		build: func(txn *pipeline.Txn, buf *bytes.Buffer) (*pipeline.Message, *apiError) {
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
	hfrom, err := gomail.ParseAddressList(parsed.Header.Get("From"))
	if err != nil || len(hfrom) == 0 {
		return nil, badField(field, "the message has no valid From header field")
	}
	var authors []string
	for _, a := range hfrom {
		authors = append(authors, a.Address)
	}
	host := s.host
	return &item{
		from: from, rcpts: rcpts, tags: req.Tags, meta: req.Metadata, authors: authors,
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
		if it.txn != nil {
			bi.ID = it.txn.ID
		}
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
// submits the survivors with one synced commit (relay.SubmitBatch).
//
// With an Idempotency-Key, the first message that commits stores a
// partial answer in the same batch: every submitted message marked
// pending. Which of them were committed cannot be known then (the relay
// reports refusals after the commit), so the final answer replaces the
// record right after, without a sync of its own; if a crash loses it,
// a replay completes the partial answer from the messages' event history,
// which was committed in the same batch as the messages.
func (s *Server) sendBatch(ctx context.Context, r *http.Request, k *apikey.Key, items []*item, id *idem) answer {
	conn, e := s.openConn(ctx, r, k)
	if e != nil {
		return errorAnswer(e, "", nil)
	}
	var (
		msgs []*pipeline.Message
		sub  []*item
		pend []int
	)
	byID := map[string]*item{}
	defer func() {
		for _, it := range items {
			it.release()
		}
	}()
	for i, it := range items {
		if it.err != nil {
			continue
		}
		if e := it.checkSenders(conn.Identity, idx("messages", i)+".from"); e != nil {
			it.err = e
			continue
		}
		s.stage(ctx, conn, it)
		if it.err != nil {
			continue
		}
		msgs = append(msgs, it.msg)
		sub = append(sub, it)
		pend = append(pend, i)
		byID[it.txn.ID] = it
	}
	o := relay.Options{}
	if id != nil {
		first := true
		o.BeforeCommit = func(b *spool.Batch, msg *pipeline.Message, rc *relay.Receipt) error {
			if !first {
				return nil
			}
			first = false
			_, partial, _ := renderBatch(items, true)
			return b.PutIdempotency(id.key, id.value(http.StatusAccepted, partial, pend), id.exp)
		}
	}
	var results []relay.BatchResult
	if len(msgs) > 0 {
		results = s.relay.SubmitBatch(ctx, msgs, o)
	}
	for j, res := range results {
		it := sub[j]
		if res.Err != nil {
			s.submitFailed(ctx, it, res.Receipt, res.Err)
			continue
		}
		it.fill(res.Receipt)
		it.done = true
		s.logAccepted(it, res.Receipt)
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
			case pipeline.EventRejected:
				ra.Status = relay.StatusRejected
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
