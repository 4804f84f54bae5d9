package capture

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	msgauth "github.com/emersion/go-msgauth/dkim"
)

// Check is one declarative assertion about a captured message
// (POST /v1/sandbox/messages/{id}/assert). Type selects it:
//
//	dkim        every DKIM signature verifies (and there is at least one)
//	dmarc       DKIM (a passing signature's d=) or SPF (the envelope
//	            sender's domain) aligns with the From domain, relaxed
//	            (RFC 7489 section 3.1): DMARC would pass on alignment
//	links       every link (HTML href/src, URLs in the text) to a host on
//	            links_allow answers 2xx to a GET; others are skipped
//	attachment  an attachment named Filename (or any, without it) has
//	            SHA256 (hex, lower case)
//	header      header Name is present (Present true) or absent (false);
//	            with Contains, one of its values holds that text
//	parts       text and/or HTML parts are present as Text/HTML ask
type Check struct {
	Type     string `json:"type"`
	Name     string `json:"name,omitempty"`
	Present  *bool  `json:"present,omitempty"`
	Contains string `json:"contains,omitempty"`
	Filename string `json:"filename,omitempty"`
	SHA256   string `json:"sha256,omitempty"`
	Text     *bool  `json:"text,omitempty"`
	HTML     *bool  `json:"html,omitempty"`
}

// CheckTypes are the known Check types.
var CheckTypes = []string{"dkim", "dmarc", "links", "attachment", "header", "parts"}

// Result is one check's outcome.
type Result struct {
	Type   string `json:"type"`
	Passed bool   `json:"passed"`
	// Reason says why it failed, or what passed.
	Reason string `json:"reason"`
	// Links lists each link the links check saw.
	Links []LinkResult `json:"links,omitempty"`
}

// LinkResult is one link of the links check.
type LinkResult struct {
	URL    string `json:"url"`
	Status int    `json:"status,omitempty"` // HTTP status; 0: not fetched
	Passed bool   `json:"passed"`
	// Skipped: the host is not on links_allow (not counted).
	Skipped bool   `json:"skipped,omitempty"`
	Error   string `json:"error,omitempty"`
}

// ValidateCheck reports what is wrong with c, naming the field.
func ValidateCheck(c *Check) (field, msg string) {
	switch c.Type {
	case "dkim", "dmarc", "links":
	case "attachment":
		if c.SHA256 == "" {
			return "sha256", "the attachment check needs sha256"
		}
	case "header":
		if c.Name == "" {
			return "name", "the header check needs name"
		}
	case "parts":
		if c.Text == nil && c.HTML == nil {
			return "text", "the parts check needs text and/or html (true or false)"
		}
	case "":
		return "type", "type is required (one of " + strings.Join(CheckTypes, ", ") + ")"
	default:
		return "type", fmt.Sprintf("unknown check type %q (want one of %s)", c.Type, strings.Join(CheckTypes, ", "))
	}
	return "", ""
}

// Assert runs checks against the captured message sm with bytes raw.
// Network checks (dkim's DNS, links) end with ctx.
func (s *Store) Assert(ctx context.Context, sm *Summary, raw []byte, checks []Check) []Result {
	p := Parse(raw)
	out := make([]Result, 0, len(checks))
	var dkimRes []*msgauth.Verification
	var dkimErr error
	dkimDone := false
	verify := func() ([]*msgauth.Verification, error) {
		if !dkimDone {
			dkimDone = true
			dkimRes, dkimErr = s.verifyDKIM(ctx, raw)
		}
		return dkimRes, dkimErr
	}
	for _, c := range checks {
		var r Result
		switch c.Type {
		case "dkim":
			r = dkimResult(verify())
		case "dmarc":
			vs, _ := verify()
			r = dmarcResult(p, sm.Sender, vs)
		case "links":
			r = s.linksResult(ctx, p)
		case "attachment":
			r = attachmentResult(p, c)
		case "header":
			r = headerResult(p, c)
		case "parts":
			r = partsResult(p, c)
		}
		r.Type = c.Type
		out = append(out, r)
	}
	return out
}

func (s *Store) verifyDKIM(ctx context.Context, raw []byte) ([]*msgauth.Verification, error) {
	lookup := func(name string) ([]string, error) {
		if s.o.LookupTXT != nil {
			return s.o.LookupTXT(ctx, name)
		}
		return net.DefaultResolver.LookupTXT(ctx, name)
	}
	return msgauth.VerifyWithOptions(bytes.NewReader(raw), &msgauth.VerifyOptions{LookupTXT: lookup})
}

func dkimResult(vs []*msgauth.Verification, err error) Result {
	if err != nil {
		return Result{Reason: "the signatures cannot be read: " + err.Error()}
	}
	if len(vs) == 0 {
		return Result{Reason: "no DKIM-Signature field"}
	}
	var ok []string
	for _, v := range vs {
		if v.Err != nil {
			return Result{Reason: fmt.Sprintf("d=%s: %v", v.Domain, v.Err)}
		}
		ok = append(ok, "d="+v.Domain)
	}
	return Result{Passed: true, Reason: "verified: " + strings.Join(ok, ", ")}
}

// aligned reports relaxed alignment of a and b: the same domain or one
// a subdomain of the other (an approximation of "the same
// organizational domain" without the public suffix list).
func aligned(a, b string) bool {
	a, b = strings.ToLower(strings.TrimSuffix(a, ".")), strings.ToLower(strings.TrimSuffix(b, "."))
	if a == "" || b == "" {
		return false
	}
	return a == b || strings.HasSuffix(a, "."+b) || strings.HasSuffix(b, "."+a)
}

func dmarcResult(p *Parsed, sender string, vs []*msgauth.Verification) Result {
	from, err := p.Addresses("From")
	if err != nil || len(from) != 1 {
		return Result{Reason: "the message needs exactly one From address"}
	}
	fd := domainOf(from[0].Address)
	var why []string
	for _, v := range vs {
		if v.Err == nil && aligned(v.Domain, fd) {
			return Result{Passed: true, Reason: fmt.Sprintf("DKIM d=%s aligns with From domain %s", v.Domain, fd)}
		}
		if v.Err == nil {
			why = append(why, fmt.Sprintf("DKIM d=%s does not align", v.Domain))
		}
	}
	if sd := domainOf(sender); aligned(sd, fd) {
		return Result{Passed: true, Reason: fmt.Sprintf("the envelope sender's domain %s (SPF) aligns with From domain %s", sd, fd)}
	}
	why = append(why, fmt.Sprintf("the envelope sender's domain %q does not align", domainOf(sender)))
	if len(vs) == 0 {
		why = append(why, "no DKIM signature")
	}
	return Result{Reason: "From domain " + fd + ": " + strings.Join(why, "; ")}
}

func domainOf(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return strings.ToLower(addr[i+1:])
	}
	return ""
}

func attachmentResult(p *Parsed, c Check) Result {
	want := strings.ToLower(c.SHA256)
	for _, a := range p.Attachments {
		if c.Filename != "" && a.Filename != c.Filename {
			continue
		}
		if a.SHA256 == want {
			return Result{Passed: true, Reason: fmt.Sprintf("attachment %q (%s, %d bytes) has sha256 %s", a.Filename, a.ContentType, a.Size, want)}
		}
		if c.Filename != "" {
			return Result{Reason: fmt.Sprintf("attachment %q has sha256 %s, not %s", a.Filename, a.SHA256, want)}
		}
	}
	if c.Filename != "" {
		return Result{Reason: fmt.Sprintf("no attachment named %q", c.Filename)}
	}
	return Result{Reason: "no attachment has sha256 " + want}
}

func headerResult(p *Parsed, c Check) Result {
	vals := p.Headers[canonicalKey(c.Name)]
	present := c.Present == nil || *c.Present
	switch {
	case !present && len(vals) > 0:
		return Result{Reason: c.Name + " is present"}
	case !present:
		return Result{Passed: true, Reason: c.Name + " is absent"}
	case len(vals) == 0:
		return Result{Reason: c.Name + " is absent"}
	case c.Contains == "":
		return Result{Passed: true, Reason: c.Name + " is present"}
	}
	for _, v := range vals {
		if strings.Contains(v, c.Contains) {
			return Result{Passed: true, Reason: fmt.Sprintf("%s holds %q", c.Name, c.Contains)}
		}
	}
	return Result{Reason: fmt.Sprintf("no %s field holds %q", c.Name, c.Contains)}
}

func partsResult(p *Parsed, c Check) Result {
	var bad []string
	if c.Text != nil && *c.Text != p.HasText {
		bad = append(bad, fmt.Sprintf("text part present: %t, want %t", p.HasText, *c.Text))
	}
	if c.HTML != nil && *c.HTML != p.HasHTML {
		bad = append(bad, fmt.Sprintf("HTML part present: %t, want %t", p.HasHTML, *c.HTML))
	}
	if len(bad) > 0 {
		return Result{Reason: strings.Join(bad, "; ")}
	}
	return Result{Passed: true, Reason: fmt.Sprintf("text part present: %t, HTML part present: %t", p.HasText, p.HasHTML)}
}

var (
	hrefRE = regexp.MustCompile(`(?i)(?:href|src)\s*=\s*["']([^"']+)["']`)
	urlRE  = regexp.MustCompile(`https?://[^\s<>"'()]+`)
)

// maxLinks bounds the links one check fetches; linkTimeout bounds each.
const (
	maxLinks    = 50
	linkTimeout = 10 * time.Second
)

// links returns the distinct http(s) links of p, in order.
func links(p *Parsed) []string {
	seen := map[string]bool{}
	var out []string
	add := func(u string) {
		u = strings.TrimRight(strings.TrimSpace(u), ".,;")
		if !seen[u] && (strings.HasPrefix(strings.ToLower(u), "http://") || strings.HasPrefix(strings.ToLower(u), "https://")) {
			seen[u] = true
			out = append(out, u)
		}
	}
	for _, m := range hrefRE.FindAllStringSubmatch(p.HTML, -1) {
		add(strings.ReplaceAll(m[1], "&amp;", "&"))
	}
	for _, m := range urlRE.FindAllString(p.Text, -1) {
		add(m)
	}
	return out
}

func (s *Store) allowed(u *url.URL) bool {
	for _, h := range s.o.LinksAllow {
		if strings.EqualFold(h, u.Host) || strings.EqualFold(h, u.Hostname()) {
			return true
		}
	}
	return false
}

func (s *Store) linksResult(ctx context.Context, p *Parsed) Result {
	ls := links(p)
	if len(ls) > maxLinks {
		ls = ls[:maxLinks]
	}
	res := make([]LinkResult, len(ls))
	client := &http.Client{Timeout: linkTimeout, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if len(via) >= 5 {
			return fmt.Errorf("more than 5 redirects")
		}
		if !s.allowed(req.URL) {
			return fmt.Errorf("redirect to %s, not on links_allow", req.URL.Host)
		}
		return nil
	}}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for i, l := range ls {
		res[i].URL = l
		u, err := url.Parse(l)
		if err != nil {
			res[i].Error = "not a URL"
			continue
		}
		if !s.allowed(u) {
			res[i].Skipped, res[i].Passed = true, true
			continue
		}
		wg.Add(1)
		go func(r *LinkResult) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.URL, nil)
			if err != nil {
				r.Error = err.Error()
				return
			}
			resp, err := client.Do(req)
			if err != nil {
				r.Error = err.Error()
				return
			}
			resp.Body.Close()
			r.Status = resp.StatusCode
			r.Passed = resp.StatusCode >= 200 && resp.StatusCode < 300
		}(&res[i])
	}
	wg.Wait()
	checked, failed := 0, 0
	var first string
	for _, r := range res {
		if r.Skipped {
			continue
		}
		checked++
		if !r.Passed {
			failed++
			if first == "" {
				first = fmt.Sprintf("%s answered %d", r.URL, r.Status)
				if r.Error != "" {
					first = r.URL + ": " + r.Error
				}
			}
		}
	}
	out := Result{Links: res, Passed: failed == 0}
	switch {
	case failed > 0:
		out.Reason = fmt.Sprintf("%d of %d links failed; first: %s", failed, checked, first)
	default:
		out.Reason = fmt.Sprintf("%d links answered 2xx, %d skipped (not on links_allow)", checked, len(res)-checked)
	}
	return out
}

func canonicalKey(k string) string { return textproto.CanonicalMIMEHeaderKey(k) }
