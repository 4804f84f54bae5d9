package httpapi

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-message/mail"

	"github.com/sluice-mta/sluice/internal/capture"
)

// Mailpit-compatible read paths over the sandbox inbox, so test helpers
// written for Mailpit's API (v1) work with a changed base URL
// (http://HOST:PORT/sandbox) and a bearer key:
//
//	GET    /sandbox/api/v1/messages?start=&limit=   list, newest first
//	GET    /sandbox/api/v1/search?query=&start=&limit=
//	                                                 to:, from:, subject:, tag: and words (text)
//	GET    /sandbox/api/v1/message/{ID}              one message: text, HTML, attachments
//	GET    /sandbox/api/v1/message/{ID}/raw          the bytes
//	(ID "latest": the tenant's newest message, as Mailpit's)
//	DELETE /sandbox/api/v1/messages                  delete all of the tenant's; body {"IDs": [...]}: only those
//
// Shapes follow Mailpit's (PascalCase fields); what Sluice has no notion
// of (Read, Snippet, Bcc, Inline) is given empty. Tenancy and scopes are
// those of /v1/sandbox.
const mailpitPath = "/sandbox/api/v1"

type mpAddress struct {
	Name    string `json:"Name"`
	Address string `json:"Address"`
}

type mpSummary struct {
	ID          string      `json:"ID"`
	MessageID   string      `json:"MessageID"`
	Read        bool        `json:"Read"`
	From        *mpAddress  `json:"From"`
	To          []mpAddress `json:"To"`
	Cc          []mpAddress `json:"Cc"`
	Bcc         []mpAddress `json:"Bcc"`
	ReplyTo     []mpAddress `json:"ReplyTo"`
	Subject     string      `json:"Subject"`
	Created     time.Time   `json:"Created"`
	Tags        []string    `json:"Tags"`
	Size        int         `json:"Size"`
	Attachments int         `json:"Attachments"`
	Snippet     string      `json:"Snippet"`
}

type mpList struct {
	Total         int         `json:"total"`
	Unread        int         `json:"unread"`
	Count         int         `json:"count"`
	MessagesCount int         `json:"messages_count"`
	Start         int         `json:"start"`
	Tags          []string    `json:"tags"`
	Messages      []mpSummary `json:"messages"`
}

type mpAttachment struct {
	PartID      string `json:"PartID"`
	FileName    string `json:"FileName"`
	ContentType string `json:"ContentType"`
	ContentID   string `json:"ContentID"`
	Size        int    `json:"Size"`
}

type mpMessage struct {
	ID          string         `json:"ID"`
	MessageID   string         `json:"MessageID"`
	From        *mpAddress     `json:"From"`
	To          []mpAddress    `json:"To"`
	Cc          []mpAddress    `json:"Cc"`
	Bcc         []mpAddress    `json:"Bcc"`
	ReplyTo     []mpAddress    `json:"ReplyTo"`
	ReturnPath  string         `json:"ReturnPath"`
	Subject     string         `json:"Subject"`
	Date        time.Time      `json:"Date"`
	Tags        []string       `json:"Tags"`
	Text        string         `json:"Text"`
	HTML        string         `json:"HTML"`
	Size        int            `json:"Size"`
	Inline      []mpAttachment `json:"Inline"`
	Attachments []mpAttachment `json:"Attachments"`
}

func mpAddrs(l []string) []mpAddress {
	out := make([]mpAddress, 0, len(l))
	for _, a := range l {
		out = append(out, mpAddress{Address: a})
	}
	return out
}

func mpSummaryOf(sm *capture.Summary) mpSummary {
	return mpSummary{ID: sm.ID, MessageID: sm.HeaderID, From: &mpAddress{Address: sm.From}, To: mpAddrs(sm.To), Cc: mpAddrs(sm.Cc),
		Bcc: []mpAddress{}, ReplyTo: []mpAddress{}, Subject: sm.Subject, Created: sm.Created, Tags: sm.Tags, Size: sm.Size,
		Attachments: sm.Attachments}
}

// mailpitQuery turns Mailpit's search query into a filter: to:, from:,
// subject:, tag: (quoted values allowed); other words are text terms,
// each to be found, and a quoted phrase one term (capture.TextTerms).
func mailpitQuery(q string) capture.Filter {
	var f capture.Filter
	var words []string
	for _, tok := range splitQuery(q) {
		k, v, ok := strings.Cut(tok, ":")
		switch k = strings.ToLower(k); {
		case ok && k == "to":
			f.To = v
		case ok && k == "from":
			f.From = v
		case ok && k == "subject":
			f.Subject = v
		case ok && k == "tag":
			f.Tag = v
		default:
			if strings.Contains(tok, " ") {
				tok = `"` + tok + `"`
			}
			words = append(words, tok)
		}
	}
	f.Text = strings.Join(words, " ")
	return f
}

// splitQuery splits on spaces outside double quotes and drops the quotes.
func splitQuery(q string) []string {
	var out []string
	var cur strings.Builder
	quoted := false
	for _, r := range q {
		switch {
		case r == '"':
			quoted = !quoted
		case r == ' ' && !quoted:
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteRune(r)
		}
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}

// mailpitAPI routes /sandbox/api/v1/...
func (s *Server) mailpitAPI(w http.ResponseWriter, r *http.Request) {
	st := s.sandboxStore(w)
	if st == nil {
		return
	}
	rest := strings.TrimPrefix(r.URL.Path, mailpitPath)
	switch {
	case rest == "/messages" && r.Method == http.MethodDelete:
		tenant, e := s.suppTenant(r.Context(), r)
		if e != nil {
			s.fail(w, e)
			return
		}
		// Mailpit's optional body {"IDs": [...]} names the messages to
		// delete; without it (or with no IDs) every message goes.
		var req struct {
			IDs []string `json:"IDs"`
		}
		if r.ContentLength != 0 {
			buf, e := s.readBody(w, r)
			if e != nil {
				s.fail(w, e)
				return
			}
			dec := json.NewDecoder(buf)
			dec.DisallowUnknownFields()
			err := dec.Decode(&req)
			putBuf(buf)
			if err != nil && err != io.EOF {
				s.fail(w, jsonError(err))
				return
			}
		}
		var err error
		if len(req.IDs) == 0 {
			_, err = st.DeleteAll(tenant)
		}
		for _, id := range req.IDs {
			if _, err = st.Delete(tenant, id); err != nil {
				break
			}
		}
		if err != nil {
			s.sandboxFailed(w, "delete the sandbox's messages", err)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok"))
	case rest == "/messages" || rest == "/search":
		if !s.method(w, r, http.MethodGet) {
			return
		}
		allowed := []string{"start", "limit"}
		if rest == "/search" {
			allowed = append(allowed, "query")
		}
		tenant, e := s.suppTenant(r.Context(), r, allowed...)
		if e != nil {
			s.fail(w, e)
			return
		}
		q := r.URL.Query()
		start, _ := strconv.Atoi(q.Get("start"))
		limit, err := strconv.Atoi(q.Get("limit"))
		if err != nil || limit <= 0 || limit > sandboxMaxLimit {
			limit = sandboxDefaultLimit
		}
		var f capture.Filter
		if rest == "/search" {
			f = mailpitQuery(q.Get("query"))
			if capture.TooManyTerms(f.Text) {
				s.fail(w, badField("query", "query may hold at most %d distinct text terms", capture.MaxTerms))
				return
			}
		}
		p, err := st.Search(tenant, f, max(start, 0), limit)
		if err != nil {
			s.sandboxFailed(w, "search the sandbox", err)
			return
		}
		all, _ := st.Search(tenant, capture.Filter{}, 0, 1)
		a := mpList{Total: all.Total, MessagesCount: p.Total, Count: p.Count, Start: p.Start, Tags: []string{}, Messages: make([]mpSummary, 0, len(p.Messages))}
		if a.MessagesCount < 0 {
			a.MessagesCount = p.Count
		}
		for _, sm := range p.Messages {
			a.Messages = append(a.Messages, mpSummaryOf(sm))
		}
		s.writeJSON(w, http.StatusOK, a)
	case strings.HasPrefix(rest, "/message/"):
		if !s.method(w, r, http.MethodGet) {
			return
		}
		id, sub, _ := strings.Cut(strings.TrimPrefix(rest, "/message/"), "/")
		if id == "latest" && (sub == "" || sub == "raw") {
			// Mailpit's ID "latest": the tenant's newest message.
			if id = s.mailpitLatest(w, r, st); id == "" {
				return
			}
		}
		switch sub {
		case "raw":
			s.sandboxRaw(w, r, st, id)
		case "":
			s.mailpitMessage(w, r, st, id)
		default:
			s.fail(w, errNotFound)
		}
	default:
		s.fail(w, errNotFound)
	}
}

// mailpitLatest answers the ID of the newest message of the request's
// tenant (Mailpit's ID "latest"), or writes the error (404 with no
// message) and answers "".
func (s *Server) mailpitLatest(w http.ResponseWriter, r *http.Request, st *capture.Store) string {
	tenant, e := s.suppTenant(r.Context(), r)
	if e != nil {
		s.fail(w, e)
		return ""
	}
	p, err := st.Search(tenant, capture.Filter{}, 0, 1)
	if err != nil {
		s.sandboxFailed(w, "search the sandbox", err)
		return ""
	}
	if len(p.Messages) == 0 {
		s.fail(w, noCapture("latest"))
		return ""
	}
	return p.Messages[0].ID
}

// GET /sandbox/api/v1/message/{ID}
func (s *Server) mailpitMessage(w http.ResponseWriter, r *http.Request, st *capture.Store, id string) {
	sm, raw, ok := s.sandboxBytes(w, r, st, id)
	if !ok {
		return
	}
	p := capture.Parse(raw)
	m := mpMessage{ID: sm.ID, MessageID: sm.HeaderID, From: &mpAddress{Address: sm.From}, To: mpAddrs(sm.To), Cc: mpAddrs(sm.Cc),
		Bcc: []mpAddress{}, ReplyTo: []mpAddress{}, ReturnPath: sm.Sender, Subject: sm.Subject, Date: sm.Created, Tags: sm.Tags,
		Text: p.Text, HTML: p.HTML, Size: sm.Size, Inline: []mpAttachment{}, Attachments: []mpAttachment{}}
	if l, err := p.Addresses("From"); err == nil && len(l) > 0 {
		m.From = &mpAddress{Name: l[0].Name, Address: l[0].Address}
	}
	h := mail.HeaderFromMap(p.Headers)
	if d, err := h.Date(); err == nil {
		m.Date = d
	}
	for _, a := range p.Attachments {
		ma := mpAttachment{PartID: a.PartID, FileName: a.Filename, ContentType: a.ContentType, Size: a.Size}
		if a.Inline {
			m.Inline = append(m.Inline, ma)
		} else {
			m.Attachments = append(m.Attachments, ma)
		}
	}
	s.writeJSON(w, http.StatusOK, m)
}
