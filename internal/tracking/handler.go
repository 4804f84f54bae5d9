package tracking

import (
	"errors"
	"html/template"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// SourceTracking is the source of opened, clicked and unsubscribed
// events.
const SourceTracking = "tracking"

// pixelGIF is a transparent 1x1 GIF (43 bytes).
var pixelGIF = []byte("GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")

// maxUnsubscribeBody bounds the body of an unsubscribe POST.
const maxUnsubscribeBody = 4096

// Owns reports whether r is addressed to a tracking host: its Host is
// the host of a tenant's base_url. The HTTP listener hands such
// requests to ServeHTTP and nothing else (the API is not served on
// tracking hosts).
func (t *Tracker) Owns(r *http.Request) bool {
	_, ok := t.opts.Load().hostKey(r.Host)
	return ok
}

// hostKey returns the configured tracking host that host (a Host
// header, with or without a port) names.
func (c *compiled) hostKey(host string) (string, bool) {
	if len(c.hosts) == 0 {
		return "", false
	}
	h := strings.ToLower(host)
	if _, ok := c.hosts[h]; ok {
		return h, true
	}
	if name, _, err := net.SplitHostPort(h); err == nil {
		if _, ok := c.hosts[name]; ok {
			return name, true
		}
	}
	return "", false
}

// servedOn reports whether tenant's links belong on the tracking host
// hk: its own base_url's host, or the default one for a tenant without
// a policy of its own.
func (c *compiled) servedOn(tenant, hk string) bool {
	b := c.policy(tenant).BaseURL
	return b != "" && strings.TrimPrefix(strings.TrimPrefix(b, "https://"), "http://") == hk
}

// ServeHTTP serves the tracking endpoints of a tracking host:
//
//	GET|HEAD /t/o/TOKEN   the open pixel (image/gif); an opened event
//	GET|HEAD /t/c/TOKEN   302 to the link; a clicked event
//	GET|HEAD /t/u/TOKEN   the unsubscribe confirmation page
//	POST     /t/u/TOKEN   unsubscribe: body List-Unsubscribe=One-Click
//	                      (RFC 8058) or confirm=yes (the page's form);
//	                      the recipient joins the tenant's suppression
//	                      list with an unsubscribed event
//
// A token that does not verify, is of another kind or belongs to another
// tenant than the host's gets 404, as does any other path.
func (t *Tracker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c := t.opts.Load()
	if t.sp.Load() == nil {
		http.Error(w, "not ready", http.StatusServiceUnavailable)
		return
	}
	hk, ok := c.hostKey(r.Host)
	rest, isT := strings.CutPrefix(r.URL.Path, "/t/")
	if !ok || !isT || len(rest) < 3 || rest[1] != '/' {
		notFound(w)
		return
	}
	kind := rest[0]
	l, err := c.Keys.Verify(kind, rest[2:])
	if err != nil || !c.servedOn(l.Tenant, hk) {
		notFound(w)
		return
	}
	h := w.Header()
	h.Set("Cache-Control", "no-store, private")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	switch kind {
	case KindOpen:
		if !getOrHead(w, r) {
			return
		}
		t.engaged(c, r, l, pipeline.EventOpened)
		h.Set("Content-Type", "image/gif")
		h.Set("Content-Length", strconv.Itoa(len(pixelGIF)))
		w.WriteHeader(http.StatusOK)
		if r.Method != http.MethodHead {
			_, _ = w.Write(pixelGIF)
		}
	case KindClick:
		if !getOrHead(w, r) {
			return
		}
		t.engaged(c, r, l, pipeline.EventClicked)
		h.Set("Location", l.URL)
		w.WriteHeader(http.StatusFound)
	case KindUnsubscribe:
		t.unsubscribe(w, r, l)
	default:
		notFound(w)
	}
}

func notFound(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNotFound)
	_, _ = w.Write([]byte("not found\n"))
}

func getOrHead(w http.ResponseWriter, r *http.Request) bool {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return true
	}
	w.Header().Set("Allow", "GET, HEAD")
	http.Error(w, "use GET", http.StatusMethodNotAllowed)
	return false
}

// engaged records an opened or clicked event for l, unless one was
// already recorded for this recipient (and link) and kind of client
// (human or machine) and the tenant does not want every one.
func (t *Tracker) engaged(c *compiled, r *http.Request, l *Link, typ string) {
	class, machine, reason := classify(r, l.Accepted, t.now(), c.MachineWindow)
	key := ""
	if !c.EveryEvent {
		key = typ + "\x00" + l.Tenant + "\x00" + l.MessageID + "\x00" + l.Recipient + "\x00" + l.URL + "\x00" + strconv.FormatBool(machine)
		if !t.seen.Load().first(key) {
			return
		}
	}
	ev := &pipeline.Event{Type: typ, MessageID: l.MessageID, Recipient: l.Recipient, Tenant: l.Tenant, Source: SourceTracking,
		Engagement: &pipeline.Engagement{URL: l.URL, UserAgent: class, Machine: machine, MachineReason: reason}}
	b := t.sp.Load().NewBatch()
	b.AddEvent(ev)
	// Not synced: an engagement event is lost only if the machine (not
	// the process) goes down within moments of writing it.
	if err := b.Commit(false); err != nil {
		t.log.Error("cannot record an engagement event", "type", typ, "msgid", l.MessageID, "err", err)
		if key != "" {
			t.seen.Load().forget(key)
		}
	}
}

var unsubPage = template.Must(template.New("unsub").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<meta name="robots" content="noindex"><title>Unsubscribe</title></head>
<body style="font-family:sans-serif;max-width:32em;margin:3em auto">
{{if .Done}}<h1>You are unsubscribed</h1>
<p>{{.Address}} will no longer receive these messages.</p>
{{else}}<h1>Unsubscribe?</h1>
<p>Stop sending these messages to {{.Address}}?</p>
<form method="post" action="{{.Action}}"><input type="hidden" name="confirm" value="yes">
<button type="submit">Unsubscribe</button></form>
{{end}}</body></html>
`))

// unsubscribe serves /t/u/: GET shows the confirmation page (a GET never
// unsubscribes: scanners fetch links), POST unsubscribes.
func (t *Tracker) unsubscribe(w http.ResponseWriter, r *http.Request, l *Link) {
	if l.Recipient == "" {
		notFound(w)
		return
	}
	page := struct {
		Done    bool
		Address string
		Action  string
	}{Address: l.Recipient, Action: r.URL.Path}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_ = unsubPage.Execute(w, page)
		return
	case http.MethodPost:
	default:
		w.Header().Set("Allow", "GET, HEAD, POST")
		http.Error(w, "use GET or POST", http.StatusMethodNotAllowed)
		return
	}
	form, status := unsubscribeForm(w, r)
	if status != 0 {
		msg := "send List-Unsubscribe=One-Click (RFC 8058) as application/x-www-form-urlencoded or multipart/form-data"
		if status == http.StatusRequestEntityTooLarge {
			msg = "the request body is too large"
		}
		http.Error(w, msg, status)
		return
	}
	method := ""
	switch {
	case form.Get("List-Unsubscribe") == "One-Click":
		method = "one-click"
	case form.Get("confirm") == "yes":
		method = "page"
	}
	if method == "" {
		http.Error(w, "send List-Unsubscribe=One-Click (RFC 8058) as application/x-www-form-urlencoded or multipart/form-data", http.StatusBadRequest)
		return
	}
	// A one-click POST comes from the mailbox provider's servers by
	// design (RFC 8058): it is never flagged machine.
	class, _, _ := classify(r, l.Accepted, t.now(), -1)
	ev := &pipeline.Event{Type: pipeline.EventUnsubscribed, MessageID: l.MessageID, Recipient: l.Recipient, Tenant: l.Tenant,
		Source: SourceTracking, Engagement: &pipeline.Engagement{UserAgent: class, Method: method}}
	// If absent, in one step: of concurrent POSTs (retries, a double
	// click) one adds the entry and its events; an address already
	// listed (a hard bounce, an earlier unsubscribe) keeps its entry.
	_, err := t.sp.Load().AddSuppressionIfAbsent(&spool.Suppression{Tenant: l.Tenant, Address: l.Recipient, Reason: "unsubscribed (" + method + ")",
		Source: spool.SuppressionUnsubscribe, MessageID: l.MessageID}, ev)
	if err != nil {
		t.log.Error("cannot record an unsubscribe", "msgid", l.MessageID, "err", err)
		http.Error(w, "cannot record the unsubscribe now; try again later", http.StatusServiceUnavailable)
		return
	}
	t.log.Info("unsubscribed", "tenant", l.Tenant, "msgid", l.MessageID, "method", method)
	page.Done = true
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = unsubPage.Execute(w, page)
}

// unsubscribeForm reads the fields of an unsubscribe POST (at most
// maxUnsubscribeBody bytes). RFC 8058 section 3.1: the mailbox provider
// SHOULD send multipart/form-data (RFC 7578) and MAY send
// application/x-www-form-urlencoded; any other body is read as the
// latter. A non-zero status is the error to answer: 413 for a body too
// large, 400 for one that does not parse.
func unsubscribeForm(w http.ResponseWriter, r *http.Request) (url.Values, int) {
	body := http.MaxBytesReader(w, r.Body, maxUnsubscribeBody)
	if mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err == nil && mt == "multipart/form-data" {
		if params["boundary"] == "" {
			return nil, http.StatusBadRequest
		}
		form := url.Values{}
		mr := multipart.NewReader(body, params["boundary"])
		for {
			p, err := mr.NextPart()
			if err == io.EOF {
				return form, 0
			}
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				return nil, http.StatusRequestEntityTooLarge
			}
			if err != nil {
				return nil, http.StatusBadRequest
			}
			v, err := io.ReadAll(p)
			if errors.As(err, &tooLarge) {
				return nil, http.StatusRequestEntityTooLarge
			}
			if err != nil {
				return nil, http.StatusBadRequest
			}
			if name := p.FormName(); name != "" && p.FileName() == "" {
				form.Add(name, string(v))
			}
		}
	}
	b, err := io.ReadAll(body)
	if err != nil {
		return nil, http.StatusRequestEntityTooLarge
	}
	form, err := url.ParseQuery(string(b))
	if err != nil {
		return nil, http.StatusBadRequest
	}
	return form, 0
}
