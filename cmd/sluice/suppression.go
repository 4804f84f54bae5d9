package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

const suppressionUsage = `Usage:
  sluice suppression list   [--limit N] [--all] [--json] [flags]
  sluice suppression add    ADDRESS [--reason TEXT] [flags]
  sluice suppression remove ADDRESS [flags]

Manages the suppression list of the API key's tenant through the HTTP API
(/v1/suppressions): recipients on it are refused at RCPT (SMTP 550 5.7.1,
HTTP status "suppressed"). Hard bounces add addresses by themselves.

list prints one entry per line (address, source, class, created, reason),
a page at a time with --limit, every page with --all; --json prints the
API's answer. Exit status 0 on success, 1 when the API refused or failed
(the error is printed), 2 on a usage error.

Flags:
`

// runSuppression implements `sluice suppression`.
func runSuppression(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, suppressionUsage)
		suppressionFlags("suppression", stderr).fs.PrintDefaults()
		return 2
	}
	sub, rest := args[0], args[1:]
	switch sub {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, suppressionUsage)
		f := suppressionFlags("suppression", stdout)
		f.fs.SetOutput(stdout)
		f.fs.PrintDefaults()
		return 0
	case "list", "add", "remove":
	default:
		fmt.Fprintf(stderr, "sluice suppression: unknown subcommand %q (want list, add or remove)\n", sub)
		return 2
	}
	f := suppressionFlags("suppression "+sub, stderr)
	limit, all, cursor, asJSON, reason := f.limit, f.all, f.cursor, f.asJSON, f.reason
	f.fs.Usage = func() {
		fmt.Fprint(stderr, suppressionUsage)
		f.fs.PrintDefaults()
	}
	// Flags may come before or after the address.
	var pos []string
	for {
		if err := f.fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		if f.fs.NArg() == 0 {
			break
		}
		pos = append(pos, f.fs.Arg(0))
		rest = f.fs.Args()[1:]
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "sluice suppression %s: "+format+"\n", append([]any{sub}, a...)...)
		return 2
	}
	if *f.key == "" {
		*f.key = os.Getenv("SLUICE_API_KEY")
	}
	if *f.key == "" {
		return usageErr("an API key is required: --key or SLUICE_API_KEY")
	}
	switch {
	case sub == "list" && len(pos) > 0:
		return usageErr("unexpected argument %q", pos[0])
	case sub != "list" && len(pos) != 1:
		return usageErr("give exactly one ADDRESS")
	case sub == "list" && (*limit < 1 || *limit > 1000):
		return usageErr("--limit must be from 1 to 1000")
	}
	c := f.client()
	defer c.close()
	switch sub {
	case "add":
		body, _ := json.Marshal(map[string]string{"address": pos[0], "reason": *reason, "source": "cli"})
		ans, code := c.do(stderr, sub, http.MethodPost, "/v1/suppressions", nil, body)
		if code != 0 {
			return code
		}
		return printEntry(stdout, ans, "added")
	case "remove":
		ans, code := c.do(stderr, sub, http.MethodDelete, "/v1/suppressions/"+url.PathEscape(pos[0]), url.Values{"source": {"cli"}}, nil)
		if code != 0 {
			return code
		}
		return printEntry(stdout, ans, "removed")
	}
	// list
	return listPages(c, stdout, stderr, listing{
		cmd: "sluice suppression", sub: sub, path: "/v1/suppressions", limit: *limit, cursor: *cursor, all: *all, asJSON: *asJSON,
		noun: "entries", header: "ADDRESS\tSOURCE\tCLASS\tCREATED\tREASON",
	}, func(ans []byte, tw io.Writer) (string, error) {
		var page struct {
			Suppressions []suppEntry `json:"suppressions"`
			NextCursor   string      `json:"next_cursor"`
		}
		if err := json.Unmarshal(ans, &page); err != nil {
			return "", err
		}
		for _, e := range page.Suppressions {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Address, e.Source, dash(e.Class), e.Created.UTC().Format(time.RFC3339), dash(e.Reason))
		}
		return page.NextCursor, nil
	})
}

// listing is one paged list command: GET path with limit and cursor.
type listing struct {
	cmd, sub, path string     // "sluice suppression", "list", the API path
	query          url.Values // more query parameters (filters); nil: none
	limit          int
	cursor         string // where to start ("" : the first page)
	all, asJSON    bool   // follow next_cursor; print the API's JSON answers
	noun, header   string // "entries"; the table's tab-separated header line
}

// listPages fetches a listing page by page (every page with all, else
// one). Each answer is printed as JSON, or handed to row, which writes
// table rows to tw and returns the page's next_cursor. With all, a JSON
// answer with nothing listed (a page the API cut short at its scan
// budget with a next_cursor, or an empty last page) is not printed,
// unless no page listed anything: then the last one is, so the output is
// never empty. A cursor left over is named on stderr. It returns the
// command's exit code.
func listPages(c *suppClient, stdout, stderr io.Writer, l listing, row func(ans []byte, tw io.Writer) (string, error)) int {
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	if !l.asJSON {
		fmt.Fprintln(tw, l.header)
	}
	next, printed := l.cursor, false
	for {
		q := url.Values{"limit": {strconv.Itoa(l.limit)}}
		for k, v := range l.query {
			q[k] = v
		}
		if next != "" {
			q.Set("cursor", next)
		}
		ans, code := c.do(stderr, l.sub, http.MethodGet, l.path, q, nil)
		if code != 0 {
			return code
		}
		var page struct {
			NextCursor string `json:"next_cursor"`
		}
		var err error
		if l.asJSON {
			err = json.Unmarshal(ans, &page)
			if !l.all || !emptyPage(ans) || page.NextCursor == "" && !printed {
				fmt.Fprintf(stdout, "%s\n", bytes.TrimSpace(ans))
				printed = true
			}
		} else {
			page.NextCursor, err = row(ans, tw)
		}
		if err != nil {
			fmt.Fprintf(stderr, "%s %s: the API answered something that is not a list: %v\n", l.cmd, l.sub, err)
			return 1
		}
		next = page.NextCursor
		if next == "" || !l.all {
			break
		}
	}
	if !l.asJSON {
		tw.Flush()
		if next != "" {
			fmt.Fprintf(stderr, "more %s: --cursor %s (or --all)\n", l.noun, next)
		}
	}
	return 0
}

// emptyPage reports whether a listing's JSON answer lists nothing: none
// of its top-level arrays has an element.
func emptyPage(ans []byte) bool {
	var fields map[string]json.RawMessage
	if json.Unmarshal(ans, &fields) != nil {
		return false
	}
	for _, v := range fields {
		var items []json.RawMessage
		if json.Unmarshal(v, &items) == nil && len(items) > 0 {
			return false
		}
	}
	return true
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

type suppEntry struct {
	Address string    `json:"address"`
	Tenant  string    `json:"tenant"`
	Reason  string    `json:"reason"`
	Class   string    `json:"class"`
	Source  string    `json:"source"`
	EventID string    `json:"event_id"`
	Created time.Time `json:"created"`
}

func printEntry(stdout io.Writer, ans []byte, what string) int {
	var e suppEntry
	if err := json.Unmarshal(ans, &e); err != nil {
		fmt.Fprintf(stdout, "%s\n", bytes.TrimSpace(ans))
		return 0
	}
	tenant := e.Tenant
	if tenant == "" {
		tenant = `""`
	}
	fmt.Fprintf(stdout, "%s %s (tenant %s)\n", what, e.Address, tenant)
	return 0
}

// suppFlags are the flags every subcommand takes.
type suppFlags struct {
	fs       *flag.FlagSet
	url      *string
	key      *string
	tenant   optString
	timeout  *time.Duration
	insecure *bool
	// list
	limit  *int
	all    *bool
	cursor *string
	asJSON *bool
	// add
	reason *string
}

// optString is a string flag that knows whether it was given (so that
// --tenant "" differs from no --tenant).
type optString struct {
	set bool
	v   string
}

func (o *optString) String() string     { return o.v }
func (o *optString) Set(v string) error { o.set, o.v = true, v; return nil }

func suppressionFlags(name string, out io.Writer) *suppFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	f := apiFlags(fs)
	fs.Var(&f.tenant, "tenant", "work on the list of tenant `NAME` (a key with the admin scope); \"\" is mail without a tenant")
	f.listFlags("list: ")
	f.reason = fs.String("reason", "", "add: why the address is suppressed")
	return f
}

// listFlags adds the paging flags of a listing (--limit, --all, --cursor,
// --json); each usage starts with which.
func (f *suppFlags) listFlags(which string) {
	f.limit = f.fs.Int("limit", 100, which+"most entries per page (1 to 1000)")
	f.all = f.fs.Bool("all", false, which+"follow next_cursor through every page")
	f.cursor = f.fs.String("cursor", "", which+"start at this next_cursor")
	f.asJSON = f.fs.Bool("json", false, which+"print the API's JSON answers (one per page)")
}

// apiFlags adds the flags of a command that talks to a running node's
// HTTP API (--url, --key, --timeout, --insecure) to fs.
func apiFlags(fs *flag.FlagSet) *suppFlags {
	defURL := os.Getenv("SLUICE_URL")
	if defURL == "" {
		defURL = "http://127.0.0.1:8025"
	}
	f := &suppFlags{fs: fs}
	f.url = fs.String("url", defURL, "base URL of the HTTP API (env SLUICE_URL)")
	f.key = fs.String("key", "", "API key (default: env SLUICE_API_KEY)")
	f.timeout = fs.Duration("timeout", 30*time.Second, "request timeout")
	f.insecure = fs.Bool("insecure", false, "do not verify the server's TLS certificate")
	return f
}

// suppClient sends the requests of a command to the HTTP API; prog
// starts its error messages ("sluice suppression").
type suppClient struct {
	f    *suppFlags
	tr   *http.Transport
	prog string
}

func (f *suppFlags) client() *suppClient {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if *f.insecure {
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
	}
	return &suppClient{f: f, tr: tr, prog: "sluice suppression"}
}

func (c *suppClient) close() { c.tr.CloseIdleConnections() }

// do sends one request and returns the answer of a 2xx, or the exit code
// after printing the API's error.
func (c *suppClient) do(stderr io.Writer, sub, method, path string, q url.Values, body []byte) ([]byte, int) {
	if q == nil {
		q = url.Values{}
	}
	if c.f.tenant.set {
		q.Set("tenant", c.f.tenant.v)
	}
	u := strings.TrimRight(*c.f.url, "/") + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	ctx, cancel := context.WithTimeout(context.Background(), *c.f.timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		fmt.Fprintf(stderr, c.prog+" %s: --url %q: %v\n", sub, *c.f.url, err)
		return nil, 2
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+*c.f.key)
	res, err := (&http.Client{Transport: c.tr}).Do(req)
	if err != nil {
		fmt.Fprintf(stderr, c.prog+" %s: %v (is sluice serving the HTTP API at %s?)\n", sub, err, *c.f.url)
		return nil, 1
	}
	defer res.Body.Close()
	ans, err := io.ReadAll(io.LimitReader(res.Body, 16<<20))
	if err != nil {
		fmt.Fprintf(stderr, c.prog+" %s: %v\n", sub, err)
		return nil, 1
	}
	if res.StatusCode/100 == 2 {
		return ans, 0
	}
	var eb struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
			Field   string `json:"field"`
		} `json:"error"`
	}
	if json.Unmarshal(ans, &eb) == nil && eb.Error.Message != "" {
		msg := eb.Error.Message
		if eb.Error.Field != "" {
			msg += " (field " + eb.Error.Field + ")"
		}
		fmt.Fprintf(stderr, c.prog+" %s: %s: %s\n", sub, res.Status, msg)
	} else {
		fmt.Fprintf(stderr, c.prog+" %s: %s: %s\n", sub, res.Status, bytes.TrimSpace(ans))
	}
	return nil, 1
}
