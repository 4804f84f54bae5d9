package main

import (
	"github.com/sluice-mta/sluice/internal/httpapi"
	"github.com/sluice-mta/sluice/internal/queue"

	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"text/tabwriter"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

const queueUsage = `Usage:
  sluice queue list   [--json] [flags]                 the queues (like mailq's summary)
  sluice queue show   QUEUE [--limit N] [--all] [--json] [flags]   a queue's messages
  sluice queue retry  QUEUE [flags]                    retry a queue's waiting recipients now
  sluice queue retry  --message ID [flags]             retry one message now
  sluice queue flush  [flags]                          retry every queue now (postqueue -f)
  sluice queue pause  QUEUE [flags]                    no delivery attempts to QUEUE; mail stays queued
  sluice queue resume QUEUE [flags]                    end the pause

Steers the delivery queues of a running node through its HTTP API
(/v1/queues, docs/operating.md#queue-control) with an API key that has
the admin scope. QUEUE is a name as list prints it: a recipient domain,
relay:host:port, or a site with outbound shaping on. Retry ignores the
backoff. Pauses end when the node restarts. Each action is recorded as an
event naming the API key. Exit status 0 on success, 1 when the API
refused or failed (the error is printed), 2 on a usage error.

Flags:
`

// runQueue implements `sluice queue`.
func runQueue(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("queue", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := apiFlags(fs)
	asJSON := fs.Bool("json", false, "list, show: print the API's JSON answers")
	limit := fs.Int("limit", 100, "show: most messages per page (1 to 1000)")
	all := fs.Bool("all", false, "show: follow next_cursor through every page")
	cursor := fs.String("cursor", "", "show: start at this next_cursor")
	message := fs.String("message", "", "retry: the message `ID` to retry instead of a queue")
	sub, pos, code, ok := parseSubcommand(fs, args, queueUsage, stdout, stderr)
	if !ok {
		return code
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "sluice queue %s: "+format+"\n", append([]any{sub}, a...)...)
		return 2
	}
	switch {
	case (sub == "list" || sub == "flush") && len(pos) == 0:
	case sub == "retry" && *message != "" && len(pos) == 0:
	case (sub == "show" || sub == "retry" || sub == "pause" || sub == "resume") && len(pos) == 1 && *message == "":
	case sub == "list" || sub == "flush" || sub == "show" || sub == "retry" || sub == "pause" || sub == "resume":
		return usageErr("wrong arguments %q (see sluice queue -h)", pos)
	default:
		return usageErr("unknown subcommand (want list, show, retry, flush, pause or resume)")
	}
	if sub == "show" && (*limit < 1 || *limit > 1000) {
		return usageErr("--limit must be from 1 to 1000")
	}
	if !f.haveKey() {
		return usageErr("an API key with the admin scope is required: --key or SLUICE_API_KEY")
	}
	c := f.client()
	c.prog = "sluice queue"
	defer c.close()
	post := func(path string) int {
		ans, code := c.do(stderr, sub, http.MethodPost, path, nil, nil)
		if code != 0 {
			return code
		}
		var a httpapi.QueueAction
		if err := json.Unmarshal(ans, &a); err != nil {
			fmt.Fprintf(stderr, "sluice queue %s: the API answered something unexpected: %v\n", sub, err)
			return 1
		}
		what := a.Queue
		switch {
		case a.MessageID != "":
			what = "message " + a.MessageID
		case what == "":
			what = "every queue"
		}
		switch {
		case a.Recipients != nil:
			fmt.Fprintf(stdout, "%s: %d recipients made ready now\n", what, *a.Recipients)
		case a.Changed != nil && !*a.Changed:
			fmt.Fprintf(stdout, "%s: already %sd\n", what, sub)
		default:
			fmt.Fprintf(stdout, "%s: %sd\n", what, sub)
		}
		return 0
	}
	switch sub {
	case "flush":
		return post("/v1/queues/retry")
	case "retry":
		if *message != "" {
			return post("/v1/messages/" + url.PathEscape(*message) + "/retry")
		}
		return post("/v1/queues/" + url.PathEscape(pos[0]) + "/retry")
	case "pause", "resume":
		return post("/v1/queues/" + url.PathEscape(pos[0]) + "/" + sub)
	case "list":
		ans, code := c.do(stderr, sub, http.MethodGet, "/v1/queues", nil, nil)
		if code != 0 {
			return code
		}
		if *asJSON {
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
		fmt.Fprintln(tw, "QUEUE\tREADY\tWAITING\tPAUSED\tOLDEST\tNEXT ATTEMPT\tLAST ERROR")
		for _, q := range l.Queues {
			oldest := "-"
			if !q.Oldest.IsZero() {
				oldest = time.Since(q.Oldest).Round(time.Second).String()
			}
			next := "-"
			if q.NextAttempt != nil {
				next = q.NextAttempt.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%v\t%s\t%s\t%s\n", q.Name, q.Ready, q.Waiting, q.Paused, oldest, next, replyText(q.LastError))
		}
		tw.Flush()
		if len(l.Queues) == 0 {
			fmt.Fprintln(stdout, "the queues are empty")
		}
		return 0
	}
	// show
	return listPages(c, stdout, stderr, listing{
		cmd: "sluice queue", sub: sub, path: "/v1/queues/" + url.PathEscape(pos[0]) + "/messages", limit: *limit,
		cursor: *cursor, all: *all, asJSON: *asJSON, noun: "messages",
		header: "ID\tRECEIVED\tSENDER\tRECIPIENT\tSTATE\tATTEMPTS\tNEXT ATTEMPT\tLAST REPLY",
	}, func(ans []byte, tw io.Writer) (string, error) {
		var page struct {
			Messages []struct {
				ID         string    `json:"id"`
				Sender     string    `json:"sender"`
				Received   time.Time `json:"received"`
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
		if err := json.Unmarshal(ans, &page); err != nil {
			return "", err
		}
		for _, m := range page.Messages {
			for _, r := range m.Recipients {
				na := "-"
				if r.NextAttempt != nil {
					na = r.NextAttempt.UTC().Format(time.RFC3339)
				}
				sender := m.Sender
				if sender == "" {
					sender = "<>"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", m.ID, m.Received.UTC().Format(time.RFC3339), sender,
					r.Email, r.State, r.Attempts, na, replyText(r.Response))
			}
		}
		return page.NextCursor, nil
	})
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
