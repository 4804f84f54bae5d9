package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sluice-mta/sluice/internal/httpapi"
	"github.com/sluice-mta/sluice/internal/queue"
	"github.com/sluice-mta/sluice/pipeline"
)

const queueUsage = `Usage:
  sluice queue [flags]                                 every queued message, as mailq prints it
  sluice queue list   [--json] [flags]                 the queues (like mailq's summary)
  sluice queue show   [QUEUE] [FILTERS] [--limit N] [--all] [--json] [flags]   queued messages
  sluice queue retry  QUEUE|--message ID|FILTERS [flags]     retry waiting recipients now
  sluice queue flush  [flags]                          retry every queue now (postqueue -f)
  sluice queue bounce QUEUE|--message ID|FILTERS|--everything [flags]   return to the sender with a DSN
  sluice queue cancel QUEUE|--message ID|FILTERS|--everything [flags]   drop without a DSN
  sluice queue hold   QUEUE|--message ID|FILTERS [flags]     no attempts until released
  sluice queue release QUEUE|--message ID|FILTERS [flags]    end the hold
  sluice queue pause  QUEUE [flags]                    no delivery attempts to QUEUE; mail stays queued
  sluice queue resume QUEUE [flags]                    end the pause

Steers the delivery queues of a running node through its HTTP API
(/v1/queues, docs/operating.md#queue-control) with an API key that has
the admin scope. QUEUE is a name as list prints it: a recipient domain,
relay:host:port, or a site with outbound shaping on. FILTERS (--sender,
--rcpt, --rcpt-domain, --tenant, --older-than, --younger-than, --state)
select recipients, within QUEUE or the message when given too. Retry
ignores the backoff; held recipients are not attempted until released;
pauses and holds outlast a restart. Each action is recorded as an event
naming the API key. Postfix equivalents: mailq = sluice queue,
postqueue -f = flush, postsuper -d = cancel, -h = hold, -H = release.
Exit status 0 on success, 1 when the API refused or failed (the error is
printed), 2 on a usage error.

Flags:
`

// queueFilterFlags are the filters of show and the actions, as the API's
// query parameters.
type queueFilterFlags struct {
	sender, rcpt, rcptDomain, olderThan, youngerThan, state *string
	tenant                                                  *optString
}

func newQueueFilterFlags(fs *flag.FlagSet, f *suppFlags) *queueFilterFlags {
	fs.Var(&f.tenant, "tenant", "filter: tenant `NAME`; \"\" is mail without a tenant")
	return &queueFilterFlags{
		sender:      fs.String("sender", "", "filter: envelope sender `ADDRESS` (<> the null sender)"),
		rcpt:        fs.String("rcpt", "", "filter: recipient `ADDRESS`"),
		rcptDomain:  fs.String("rcpt-domain", "", "filter: recipient `DOMAIN`"),
		olderThan:   fs.String("older-than", "", "filter: received more than `DURATION` ago (90m, 48h)"),
		youngerThan: fs.String("younger-than", "", "filter: received less than `DURATION` ago"),
		state:       fs.String("state", "", "filter: queued, deferred or held"),
		tenant:      &f.tenant,
	}
}

// query returns the filters given as query parameters (tenant is added
// by the client itself) and whether any filter is set.
func (q *queueFilterFlags) query() (url.Values, bool) {
	v := url.Values{}
	for k, p := range map[string]*string{"sender": q.sender, "rcpt": q.rcpt, "rcpt_domain": q.rcptDomain,
		"older_than": q.olderThan, "younger_than": q.youngerThan, "state": q.state} {
		if *p != "" {
			v.Set(k, *p)
		}
	}
	return v, len(v) > 0 || q.tenant.set
}

// runQueue implements `sluice queue`.
func runQueue(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("queue", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := apiFlags(fs)
	f.listFlags("show: ")
	filters := newQueueFilterFlags(fs, f)
	message := fs.String("message", "", "an action on the message `ID` (filters narrow it to some recipients)")
	everything := fs.Bool("everything", false, "bounce, cancel: every queued recipient of every queue")
	if len(args) == 0 || strings.HasPrefix(args[0], "-") && !isHelp(args[0]) {
		args = append([]string{"mailq"}, args...)
	}
	sub, pos, code, ok := parseSubcommand(fs, args, queueUsage, stdout, stderr)
	if !ok {
		return code
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "sluice queue %s: "+format+"\n", append([]any{sub}, a...)...)
		return 2
	}
	query, filtered := filters.query()
	action := sub == "retry" || sub == "bounce" || sub == "cancel" || sub == "hold" || sub == "release"
	switch {
	case (sub == "list" || sub == "flush" || sub == "mailq") && len(pos) == 0 && !filtered && *message == "":
	case sub == "show" && len(pos) <= 1 && *message == "":
	case action && len(pos) <= 1 && !(len(pos) == 1 && *message != ""):
		if len(pos) == 0 && *message == "" && !filtered && !(*everything && (sub == "bounce" || sub == "cancel")) {
			return usageErr("name a QUEUE, a --message or a filter (see sluice queue -h)")
		}
	case (sub == "pause" || sub == "resume") && len(pos) == 1 && !filtered && *message == "":
	case (sub == "pause" || sub == "resume") && len(pos) == 0:
		return usageErr("name the QUEUE (sluice queue list shows them)")
	case sub == "list" || sub == "flush" || sub == "mailq" || sub == "show" || action || sub == "pause" || sub == "resume":
		return usageErr("wrong arguments %q (see sluice queue -h)", pos)
	default:
		return usageErr("unknown subcommand (want list, show, retry, flush, bounce, cancel, hold, release, pause or resume)")
	}
	if *f.limit < 1 || *f.limit > 1000 {
		return usageErr("--limit must be from 1 to 1000")
	}
	if !f.haveKey() {
		return usageErr("an API key with the admin scope is required: --key or SLUICE_API_KEY")
	}
	c := f.client()
	c.prog = "sluice queue"
	defer c.close()
	post := func(path string, q url.Values) int {
		ans, code := c.do(stderr, sub, http.MethodPost, path, q, nil)
		if code != 0 {
			return code
		}
		var a httpapi.QueueAction
		if err := json.Unmarshal(ans, &a); err != nil {
			fmt.Fprintf(stderr, "sluice queue %s: the API answered something unexpected: %v\n", sub, err)
			return 1
		}
		fmt.Fprintln(stdout, actionText(a, filtered))
		return 0
	}
	switch sub {
	case "flush":
		return post("/v1/queues/retry", nil)
	case "retry", "bounce", "cancel", "hold", "release":
		if *everything && sub != "bounce" && sub != "cancel" {
			return usageErr("--everything is for bounce and cancel")
		}
		if *everything && len(pos) == 0 && *message == "" && !filtered {
			query.Set("all", "true")
		}
		switch {
		case *message != "":
			return post("/v1/messages/"+url.PathEscape(*message)+"/"+sub, query)
		case len(pos) == 1:
			return post("/v1/queues/"+url.PathEscape(pos[0])+"/"+sub, query)
		}
		return post("/v1/queues/"+sub, query)
	case "pause", "resume":
		return post("/v1/queues/"+url.PathEscape(pos[0])+"/"+sub, nil)
	case "list":
		return queueList(c, stdout, stderr, *f.asJSON)
	case "mailq":
		return mailq(c, stdout, stderr)
	}
	// show
	path := "/v1/admin/messages"
	if len(pos) == 1 {
		path = "/v1/queues/" + url.PathEscape(pos[0]) + "/messages"
	}
	return listPages(c, stdout, stderr, listing{
		cmd: "sluice queue", sub: sub, path: path, query: query, limit: *f.limit,
		cursor: *f.cursor, all: *f.all, asJSON: *f.asJSON, noun: "messages",
		header: "ID\tRECEIVED\tSENDER\tRECIPIENT\tSTATE\tATTEMPTS\tNEXT ATTEMPT\tLAST REPLY",
	}, func(ans []byte, tw io.Writer) (string, error) {
		page, err := decodeQueuePage(ans)
		if err != nil {
			return "", err
		}
		for _, m := range page.Messages {
			for _, r := range m.Recipients {
				na := "-"
				if r.NextAttempt != nil {
					na = r.NextAttempt.UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", m.ID, m.Received.UTC().Format(time.RFC3339), senderText(m.Sender),
					r.Email, r.State, r.Attempts, na, replyText(r.Response))
			}
		}
		return page.NextCursor, nil
	})
}

// actionText is what an action prints.
func actionText(a httpapi.QueueAction, filtered bool) string {
	what := a.Queue
	switch {
	case a.MessageID != "":
		what = "message " + a.MessageID
	case what == "" && filtered:
		what = "matching recipients"
	case what == "":
		what = "every queue"
	}
	if a.Recipients == nil {
		state := a.Action + "d"
		if a.Changed != nil && !*a.Changed {
			state = "already " + state
		}
		return what + ": " + state
	}
	done := map[string]string{"retry": "made ready now", "bounce": "bounced to the sender", "cancel": "cancelled",
		"hold": "held", "release": "released"}[a.Action]
	return fmt.Sprintf("%s: %d recipients %s", what, *a.Recipients, done)
}

// queuePage is a page of GET /v1/admin/messages.
type queuePage struct {
	Messages []struct {
		ID         string    `json:"id"`
		Sender     string    `json:"sender"`
		Received   time.Time `json:"received"`
		Size       int       `json:"size"`
		Recipients []struct {
			Email       string             `json:"email"`
			State       string             `json:"state"`
			Attempts    int                `json:"attempts"`
			NextAttempt *time.Time         `json:"next_attempt"`
			Response    *pipeline.Response `json:"response"`
		} `json:"recipients"`
	} `json:"messages"`
	NextCursor string `json:"next_cursor"`
}

func decodeQueuePage(ans []byte) (*queuePage, error) {
	var p queuePage
	err := json.Unmarshal(ans, &p)
	return &p, err
}

func queueList(c *suppClient, stdout, stderr io.Writer, asJSON bool) int {
	ans, code := c.do(stderr, "list", http.MethodGet, "/v1/queues", nil, nil)
	if code != 0 {
		return code
	}
	if asJSON {
		fmt.Fprintf(stdout, "%s\n", bytes.TrimSpace(ans))
		return 0
	}
	var l struct {
		Queues []queue.QueueInfo `json:"queues"`
	}
	if err := json.Unmarshal(ans, &l); err != nil {
		fmt.Fprintf(stderr, "sluice queue list: the API answered something unexpected: %v\n", err)
		return 1
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "QUEUE\tREADY\tWAITING\tHELD\tPAUSED\tOLDEST\tNEXT ATTEMPT\tLAST ERROR")
	for _, q := range l.Queues {
		oldest := "-"
		if !q.Oldest.IsZero() {
			oldest = time.Since(q.Oldest).Round(time.Second).String()
		}
		next := "-"
		if q.NextAttempt != nil {
			next = q.NextAttempt.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%v\t%s\t%s\t%s\n", q.Name, q.Ready, q.Waiting, q.Held, q.Paused, oldest, next, replyText(q.LastError))
	}
	tw.Flush()
	if len(l.Queues) == 0 {
		fmt.Fprintln(stdout, "the queues are empty")
	}
	return 0
}

// mailq prints every queued message the way Postfix's mailq does: the
// id (with ! when a recipient is held), size, arrival time and sender,
// then each recipient under its last reply in parentheses, and a total.
func mailq(c *suppClient, stdout, stderr io.Writer) int {
	w := &bytes.Buffer{}
	fmt.Fprintf(w, "%-27s %8s %-20s  %s\n", "-Queue ID-", "--Size--", "----Arrival Time----", "-Sender/Recipient-------")
	n, size, cursor := 0, 0, ""
	for {
		q := url.Values{"limit": {"1000"}}
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		ans, code := c.do(stderr, "mailq", http.MethodGet, "/v1/admin/messages", q, nil)
		if code != 0 {
			return code
		}
		page, err := decodeQueuePage(ans)
		if err != nil {
			fmt.Fprintf(stderr, "sluice queue: the API answered something unexpected: %v\n", err)
			return 1
		}
		for _, m := range page.Messages {
			mark := ""
			for _, r := range m.Recipients {
				if r.State == "held" {
					mark = "!"
				}
			}
			fmt.Fprintf(w, "%-27s %8d %-20s  %s\n", m.ID+mark, m.Size, m.Received.Local().Format("Mon Jan _2 15:04:05"), senderText(m.Sender))
			for _, r := range m.Recipients {
				if r.Response != nil {
					fmt.Fprintf(w, "(%s)\n", replyText(r.Response))
				}
				fmt.Fprintf(w, "%59s%s\n", "", r.Email)
			}
			fmt.Fprintln(w)
			n++
			size += m.Size
		}
		if cursor = page.NextCursor; cursor == "" {
			break
		}
		if w.Len() > 1<<16 {
			_, _ = stdout.Write(w.Bytes())
			w.Reset()
		}
	}
	if n == 0 {
		fmt.Fprintln(stdout, "Mail queue is empty")
		return 0
	}
	req := "Requests"
	if n == 1 {
		req = "Request"
	}
	fmt.Fprintf(w, "-- %d Kbytes in %d %s.\n", (size+1023)/1024, n, req)
	_, _ = stdout.Write(w.Bytes())
	return 0
}

func senderText(s string) string {
	if s == "" {
		return "<>"
	}
	return s
}

// replyText is an SMTP reply on one line, or "-".
func replyText(r *pipeline.Response) string {
	if r == nil {
		return "-"
	}
	return fmt.Sprintf("%d %s %s", r.Code, r.Enhanced, r.Text)
}

// haveKey reports whether --key, or else SLUICE_API_KEY (copied into
// it), gives an API key.
func (f *suppFlags) haveKey() bool {
	if *f.key == "" {
		*f.key = os.Getenv("SLUICE_API_KEY")
	}
	return *f.key != ""
}
