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
	"time"

	"github.com/sluice-mta/sluice/internal/domains"
)

const domainUsage = `Usage:
  sluice domain add    DOMAIN [--json] [flags]
  sluice domain show   DOMAIN [--json] [flags]
  sluice domain verify DOMAIN [--json] [flags]
  sluice domain list   [--json] [flags]
  sluice domain remove DOMAIN [flags]
  sluice domain rotate [--cancel] DOMAIN [--json] [flags]

Manages the sending domains of the API key's tenant through the HTTP API
(/v1/domains, docs/domains.md). add registers DOMAIN (a DKIM key is made
for it) and prints the records to publish; show prints each record as
verified, missing or wrong with the fix (a check at most check_cache
old); verify checks DNS now; rotate starts a DKIM key rotation behind
the delegated selectors (needs sluice.dns_server; docs/rotation.md);
rotate --cancel cancels the rotation under way (its pending key is
removed, the active key keeps signing). Exit status 0 on success (verify: DOMAIN is
verified), 1 when the API refused or failed, or verify found a record
missing or wrong, 2 on a usage error.

Flags:
`

// runDomain implements `sluice domain`.
func runDomain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("domain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := apiFlags(fs)
	fs.Var(&f.tenant, "tenant", "work on the domains of tenant `NAME` (a key with the admin scope)")
	asJSON := fs.Bool("json", false, "print the API's JSON answer")
	cancel := fs.Bool("cancel", false, "rotate: cancel the rotation under way instead of starting one")
	sub, pos, code, ok := parseSubcommand(fs, args, domainUsage, stdout, stderr)
	if !ok {
		return code
	}
	switch {
	case *cancel && sub != "rotate":
		fmt.Fprintf(stderr, "sluice domain %s: --cancel goes with rotate only\n", sub)
		return 2
	case sub == "list" && len(pos) == 0:
	case (sub == "add" || sub == "show" || sub == "verify" || sub == "remove" || sub == "rotate") && len(pos) == 1:
	default:
		fs.Usage()
		return 2
	}
	if *f.key == "" {
		*f.key = os.Getenv("SLUICE_API_KEY")
	}
	if *f.key == "" {
		fmt.Fprintf(stderr, "sluice domain %s: an API key is required: --key or SLUICE_API_KEY\n", sub)
		return 2
	}
	c := f.client()
	c.prog = "sluice domain"
	defer c.close()
	var ans []byte
	switch sub {
	case "add":
		body, _ := json.Marshal(map[string]string{"domain": pos[0]})
		ans, code = c.do(stderr, sub, http.MethodPost, "/v1/domains", nil, body)
	case "show":
		ans, code = c.do(stderr, sub, http.MethodGet, "/v1/domains/"+url.PathEscape(pos[0]), nil, nil)
	case "verify":
		ans, code = c.do(stderr, sub, http.MethodGet, "/v1/domains/"+url.PathEscape(pos[0]), url.Values{"fresh": {"true"}}, nil)
	case "rotate":
		if *cancel {
			ans, code = c.do(stderr, sub, http.MethodDelete, "/v1/domains/"+url.PathEscape(pos[0])+"/rotate", nil, nil)
			break
		}
		ans, code = c.do(stderr, sub, http.MethodPost, "/v1/domains/"+url.PathEscape(pos[0])+"/rotate", nil, []byte("{}"))
	case "remove":
		ans, code = c.do(stderr, sub, http.MethodDelete, "/v1/domains/"+url.PathEscape(pos[0]), nil, nil)
	case "list":
		ans, code = c.do(stderr, sub, http.MethodGet, "/v1/domains", nil, nil)
	}
	if code != 0 {
		return code
	}
	var many struct {
		Domains []domainView `json:"domains"`
	}
	var one domainView
	var err error
	if sub == "list" {
		err = json.Unmarshal(ans, &many)
	} else {
		err = json.Unmarshal(ans, &one)
		many.Domains = []domainView{one}
	}
	if err != nil {
		fmt.Fprintf(stderr, "sluice domain %s: the API answered something unexpected: %v\n", sub, err)
		return 1
	}
	if *asJSON {
		fmt.Fprintf(stdout, "%s\n", bytes.TrimSpace(ans))
	} else {
		for _, d := range many.Domains {
			printDomain(stdout, d, sub)
		}
	}
	if sub == "verify" && one.State != "verified" {
		return 1
	}
	return 0
}

type domainView struct {
	Domain   string           `json:"domain"`
	State    string           `json:"state"`
	Verified *time.Time       `json:"verified"`
	Records  []domains.Status `json:"records"`
	Keys     []struct {
		Selector string    `json:"selector"`
		Algo     string    `json:"algo"`
		State    string    `json:"state"`
		Since    time.Time `json:"since"`
	} `json:"keys"`
}

func printDomain(w io.Writer, d domainView, sub string) {
	if sub == "remove" {
		fmt.Fprintf(w, "%s: removed\n", d.Domain)
		return
	}
	fmt.Fprintf(w, "%s: %s\n", d.Domain, d.State)
	for _, r := range d.Records {
		state := r.State
		if state == "" {
			state = "publish"
		}
		fmt.Fprintf(w, "  %-9s %-15s %s\n", state, r.Kind, r.Zone)
		if r.Detail != "" {
			fmt.Fprintf(w, "            %s\n", r.Detail)
		}
		if r.Fix != "" && r.Fix != r.Zone {
			fmt.Fprintf(w, "            fix: %s\n", r.Fix)
		}
	}
	for _, k := range d.Keys {
		fmt.Fprintf(w, "  key %-9s %-8s %-7s since %s\n", k.Selector, k.State, k.Algo, k.Since.UTC().Format(time.RFC3339))
	}
}
