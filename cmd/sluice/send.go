package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

const sendUsage = `Usage:
  sluice send --from ADDR --to ADDR [--to ADDR]... [flags]

Sends one message through the HTTP API (POST /v1/messages) and prints the
JSON answer. Exit status 0 when the message was accepted (202), 1 when it
was refused, 2 on a usage error.

Flags:
`

// sendMessage is the body of POST /v1/messages, as the API defines it.
type sendMessage struct {
	From        string            `json:"from"`
	To          []string          `json:"to,omitempty"`
	Cc          []string          `json:"cc,omitempty"`
	Bcc         []string          `json:"bcc,omitempty"`
	ReplyTo     []string          `json:"reply_to,omitempty"`
	Subject     string            `json:"subject,omitempty"`
	Text        string            `json:"text,omitempty"`
	HTML        string            `json:"html,omitempty"`
	Headers     map[string]string `json:"headers,omitempty"`
	Attachments []sendAttachment  `json:"attachments,omitempty"`
	Tags        []string          `json:"tags,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"`
}

type sendAttachment struct {
	Filename string `json:"filename"`
	Content  string `json:"content"`
}

// repeatFlag is a repeatable flag that keeps each value whole.
type repeatFlag []string

func (r *repeatFlag) String() string     { return strings.Join(*r, ", ") }
func (r *repeatFlag) Set(v string) error { *r = append(*r, v); return nil }

// runSend implements `sluice send`.
func runSend(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("send", flag.ContinueOnError)
	fs.SetOutput(stderr)
	defURL := os.Getenv("SLUICE_URL")
	if defURL == "" {
		defURL = "http://127.0.0.1:8025"
	}
	var (
		to, cc, bcc, replyTo, attach, headers, tags, meta repeatFlag
	)
	url := fs.String("url", defURL, "base URL of the HTTP API (env SLUICE_URL)")
	key := fs.String("key", "", "API key (default: env SLUICE_API_KEY)")
	from := fs.String("from", "", "sender, addr or \"Name <addr>\" (required)")
	fs.Var(&to, "to", "recipient; repeatable")
	fs.Var(&cc, "cc", "Cc recipient; repeatable")
	fs.Var(&bcc, "bcc", "Bcc recipient; repeatable")
	fs.Var(&replyTo, "reply-to", "Reply-To address; repeatable")
	subject := fs.String("subject", "", "subject")
	text := fs.String("text", "", "text body (\"-\": read it from stdin)")
	textFile := fs.String("text-file", "", "read the text body from this file")
	htmlFile := fs.String("html-file", "", "read the HTML body from this file")
	fs.Var(&attach, "attach", "attach this file; repeatable")
	fs.Var(&headers, "header", "custom header \"Name: value\"; repeatable")
	fs.Var(&tags, "tag", "tag copied into events; repeatable")
	fs.Var(&meta, "meta", "metadata key=value copied into events; repeatable")
	idemKey := fs.String("idempotency-key", "", "Idempotency-Key header: a retry with the same key sends once")
	timeout := fs.Duration("timeout", 60*time.Second, "request timeout")
	insecure := fs.Bool("insecure", false, "do not verify the server's TLS certificate")
	fs.Usage = func() {
		fmt.Fprint(stderr, sendUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "sluice send: "+format+"\n", a...)
		return 2
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	if *key == "" {
		*key = os.Getenv("SLUICE_API_KEY")
	}
	switch {
	case *key == "":
		return usageErr("an API key is required: --key or SLUICE_API_KEY")
	case *from == "":
		return usageErr("--from is required")
	case len(to)+len(cc)+len(bcc) == 0:
		return usageErr("at least one --to, --cc or --bcc is required")
	case *text != "" && *textFile != "":
		return usageErr("give --text or --text-file, not both")
	}
	m := sendMessage{From: *from, To: to, Cc: cc, Bcc: bcc, ReplyTo: replyTo, Subject: *subject, Text: *text, Tags: tags}
	fail := func(err error) int {
		fmt.Fprintln(stderr, "sluice send:", err)
		return 1
	}
	if *text == "-" {
		b, err := io.ReadAll(os.Stdin)
		if err != nil {
			return fail(err)
		}
		m.Text = string(b)
	}
	if *textFile != "" {
		b, err := os.ReadFile(*textFile)
		if err != nil {
			return fail(err)
		}
		m.Text = string(b)
	}
	if *htmlFile != "" {
		b, err := os.ReadFile(*htmlFile)
		if err != nil {
			return fail(err)
		}
		m.HTML = string(b)
	}
	for _, p := range attach {
		b, err := os.ReadFile(p)
		if err != nil {
			return fail(err)
		}
		m.Attachments = append(m.Attachments, sendAttachment{Filename: filepath.Base(p), Content: base64.StdEncoding.EncodeToString(b)})
	}
	for _, h := range headers {
		k, v, ok := strings.Cut(h, ":")
		if !ok || strings.TrimSpace(k) == "" {
			return usageErr("--header %q: want \"Name: value\"", h)
		}
		if m.Headers == nil {
			m.Headers = map[string]string{}
		}
		m.Headers[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	for _, kv := range meta {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return usageErr("--meta %q: want key=value", kv)
		}
		if m.Metadata == nil {
			m.Metadata = map[string]string{}
		}
		m.Metadata[k] = v
	}
	body, err := json.Marshal(m)
	if err != nil {
		return fail(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(*url, "/")+"/v1/messages", bytes.NewReader(body))
	if err != nil {
		return usageErr("--url %q: %v", *url, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+*key)
	if *idemKey != "" {
		req.Header.Set("Idempotency-Key", *idemKey)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if *insecure {
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
	}
	defer tr.CloseIdleConnections()
	res, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return fail(err)
	}
	defer res.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(res.Body, 16<<20))
	if err != nil {
		return fail(err)
	}
	var pretty bytes.Buffer
	if json.Indent(&pretty, answer, "", "  ") == nil {
		answer = pretty.Bytes()
	}
	answer = bytes.TrimRight(answer, "\n")
	if res.StatusCode == http.StatusAccepted {
		fmt.Fprintf(stdout, "%s\n", answer)
		return 0
	}
	fmt.Fprintf(stdout, "%s\n", answer)
	fmt.Fprintf(stderr, "sluice send: %s\n", res.Status)
	return 1
}
