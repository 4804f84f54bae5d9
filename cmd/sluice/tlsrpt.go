package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"text/tabwriter"
	"time"

	"github.com/sluice-mta/sluice/internal/tlsrpt"
)

const tlsrptUsage = `Usage:
  sluice tlsrpt report [--day YYYY-MM-DD] [--domain DOMAIN] [--json] [flags]
  sluice tlsrpt send   [--day YYYY-MM-DD] [flags]

Prints the SMTP TLS reports (RFC 8460) of a running node for a UTC day, as
they stand, through its HTTP API (/v1/admin/tls-reports) with an API key
that has the admin scope: one line per policy domain and policy type
(successful and failed sessions, failure result types), or with --json
the API's answer, whose reports are in the RFC's JSON format, exactly as
they are (or will be) sent. send delivers the day's reports not delivered
yet to each domain's rua now (/v1/admin/tls-reports/send), as the daily
schedule does at send_at for the day before. --day defaults to yesterday
(UTC); today's counts are partial. See docs/tls-reporting.md. Exit status 0 on success,
1 when the API refused or failed, 2 on a usage error.

Flags:
`

// runTLSRPT implements `sluice tlsrpt`.
func runTLSRPT(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tlsrpt", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := apiFlags(fs)
	day := fs.String("day", "", "UTC day `YYYY-MM-DD` (default yesterday)")
	domain := fs.String("domain", "", "only the policy domain `DOMAIN`")
	asJSON := fs.Bool("json", false, "print the API's JSON answer")
	sub, pos, code, ok := parseSubcommand(fs, args, tlsrptUsage, stdout, stderr)
	if !ok {
		return code
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "sluice tlsrpt %s: "+format+"\n", append([]any{sub}, a...)...)
		return 2
	}
	if sub != "report" && sub != "send" {
		return usageErr("unknown subcommand (want report or send)")
	}
	if sub == "send" && (*domain != "" || *asJSON) {
		return usageErr("--domain and --json are report's flags")
	}
	if len(pos) > 0 {
		return usageErr("unexpected arguments %q", pos)
	}
	if *day != "" {
		if _, err := tlsrpt.Day(*day); err != nil {
			return usageErr("--day: %v", err)
		}
	}
	if !f.haveKey() {
		return usageErr("an API key with the admin scope is required: --key or SLUICE_API_KEY")
	}
	c := f.client()
	c.prog = "sluice tlsrpt"
	defer c.close()
	q := url.Values{}
	if *day != "" {
		q.Set("day", *day)
	}
	if *domain != "" {
		q.Set("domain", *domain)
	}
	if sub == "send" {
		ans, code := c.do(stderr, sub, http.MethodPost, "/v1/admin/tls-reports/send", q, nil)
		if code != 0 {
			return code
		}
		var a struct {
			Day  string `json:"day"`
			Sent int    `json:"sent"`
		}
		if err := json.Unmarshal(ans, &a); err != nil {
			fmt.Fprintf(stderr, "sluice tlsrpt send: unreadable answer: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "%d report(s) for %s sent\n", a.Sent, a.Day)
		return 0
	}
	ans, code := c.do(stderr, sub, http.MethodGet, "/v1/admin/tls-reports", q, nil)
	if code != 0 {
		return code
	}
	if *asJSON {
		_, _ = stdout.Write(ans)
		fmt.Fprintln(stdout)
		return 0
	}
	var a struct {
		Day     string `json:"day"`
		Reports []struct {
			Domain string        `json:"domain"`
			Sent   bool          `json:"sent"`
			Report tlsrpt.Report `json:"report"`
		} `json:"reports"`
	}
	if err := json.Unmarshal(ans, &a); err != nil {
		fmt.Fprintf(stderr, "sluice tlsrpt report: unreadable answer: %v\n", err)
		return 1
	}
	if len(a.Reports) == 0 {
		fmt.Fprintf(stdout, "no TLS sessions counted on %s\n", a.Day)
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DOMAIN\tPOLICY\tSUCCESSFUL\tFAILED\tFAILURES\tSENT")
	for _, r := range a.Reports {
		for _, p := range r.Report.Policies {
			fails := ""
			for i, d := range p.FailureDetails {
				if i > 0 {
					fails += ", "
				}
				fails += fmt.Sprintf("%s×%d", d.ResultType, d.FailedSessionCount)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%v\n", r.Domain, p.Policy.Type, p.Summary.Successful, p.Summary.Failure, dash(fails), r.Sent)
		}
	}
	_ = tw.Flush()
	fmt.Fprintf(stdout, "day %s (UTC), %s\n", a.Day, time.Now().UTC().Format(time.RFC3339))
	return 0
}
