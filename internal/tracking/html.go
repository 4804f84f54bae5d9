package tracking

import (
	"bytes"
	"net/url"
	"strings"

	"golang.org/x/net/html"
)

// HTMLOptions say what RewriteHTML does to one HTML document.
type HTMLOptions struct {
	// Link returns the tracking URL for the absolute http(s) link u; nil
	// leaves every link alone (no click tracking).
	Link func(u string) string
	// Pixel is markup inserted before the last </body> (else before
	// </html>, else at the end); "" inserts nothing.
	Pixel string
	// Skip reports links never to track (the unsubscribe link, links
	// already on the tracking host); nil tracks every trackable link.
	Skip func(u string) bool
}

// RewriteHTML appends src to dst with its trackable links replaced by
// o.Link's URLs and o.Pixel inserted, and reports how many links it
// rewrote. It works on the token stream of golang.org/x/net/html's
// tokenizer and copies every token's raw bytes, replacing only the href
// values it rewrites: where nothing changed the output is src byte for
// byte (comments, conditional comments, entities, attribute case and
// quoting, malformed markup all pass through as they were).
//
// Trackable is the href of an <a> or <area> start tag that is, after
// entity decoding and resolution against a <base href>, an absolute
// http or https URL, is not marked not to track (an attribute
// data-notrack, data-sluice-notrack, or clicktracking="off"), does not
// name an unsubscribe page (the word "unsubscribe" in the URL) and is
// not refused by o.Skip. mailto:, tel:, fragment-only and relative
// links without a base are left alone. The first href of a tag counts,
// as in browsers.
func RewriteHTML(dst, src []byte, o HTMLOptions) ([]byte, int) {
	z := html.NewTokenizer(bytes.NewReader(src))
	var (
		base     *url.URL
		consumed int
		bodyEnd  = -1
		htmlEnd  = -1
		n        int
	)
	for {
		tt := z.Next()
		if tt == html.ErrorToken {
			break
		}
		raw := z.Raw()
		consumed += len(raw)
		start := len(dst)
		// Copy first: TagName and TagAttr lower-case and unescape in
		// place, in the buffer Raw returns.
		dst = append(dst, raw...)
		switch tt {
		case html.EndTagToken:
			switch name := rawTagName(raw); {
			case eqFold(name, "body"):
				bodyEnd = start
			case eqFold(name, "html"):
				htmlEnd = start
			}
		case html.StartTagToken, html.SelfClosingTagToken:
			// The name from the raw bytes: TagName copies it (about a
			// thousand allocations in a 50 KB message).
			name := rawTagName(raw)
			switch {
			case eqFold(name, "base"):
				if base == nil {
					if href, ok := attr(z, "href"); ok {
						if u, err := url.Parse(strings.TrimSpace(href)); err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" {
							base = u
						}
					}
				}
			case eqFold(name, "a") || eqFold(name, "area"):
				if o.Link == nil {
					continue
				}
				href, notrack := linkAttrs(z)
				if notrack || href == "" {
					continue
				}
				u, ok := trackable(href, base)
				if !ok || o.Skip != nil && o.Skip(u) {
					continue
				}
				vs, ve, ok := hrefSpan(dst[start:])
				if !ok {
					continue
				}
				tracked := o.Link(u)
				tail := append([]byte(nil), dst[start+ve:]...)
				dst = append(append(dst[:start+vs], tracked...), tail...)
				n++
			}
		}
	}
	if consumed < len(src) { // never expected: keep every byte
		dst = append(dst, src[consumed:]...)
	}
	if o.Pixel != "" {
		at := bodyEnd
		if at < 0 {
			at = htmlEnd
		}
		if at < 0 {
			dst = append(dst, o.Pixel...)
		} else {
			tail := append([]byte(nil), dst[at:]...)
			dst = append(append(dst[:at], o.Pixel...), tail...)
		}
	}
	return dst, n
}

// rawTagName returns the name of the tag token raw ("<a ...>",
// "</BODY >"), as written: the tokenizer's rule, letters up to white
// space, '/' or '>'.
func rawTagName(raw []byte) []byte {
	i := 1
	if i < len(raw) && raw[i] == '/' {
		i++
	}
	j := i
	for j < len(raw) && !isSpace(raw[j]) && raw[j] != '/' && raw[j] != '>' {
		j++
	}
	return raw[i:j]
}

// eqFold reports whether b is s (lower case ASCII) in any case.
func eqFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// attr returns the value of the first attribute key of the current tag.
func attr(z *html.Tokenizer, key string) (string, bool) {
	for {
		k, v, more := z.TagAttr()
		if string(k) == key {
			return string(v), true
		}
		if !more {
			return "", false
		}
	}
}

// linkAttrs returns the first href of the current tag and whether the
// tag is marked not to track.
func linkAttrs(z *html.Tokenizer) (href string, notrack bool) {
	seen := false
	for {
		k, v, more := z.TagAttr()
		switch string(k) {
		case "href":
			if !seen {
				href, seen = string(v), true
			}
		case "data-notrack", "data-sluice-notrack":
			notrack = true
		case "clicktracking":
			if strings.EqualFold(strings.TrimSpace(string(v)), "off") {
				notrack = true
			}
		}
		if !more {
			return href, notrack
		}
	}
}

// trackable returns the absolute URL of href (entity-decoded) when a
// click on it can be tracked.
func trackable(href string, base *url.URL) (string, bool) {
	// Browsers strip leading and trailing C0 controls and spaces, and
	// remove tabs and newlines inside a URL (WHATWG URL standard).
	href = strings.TrimFunc(href, func(r rune) bool { return r <= ' ' })
	if strings.ContainsAny(href, "\t\r\n") {
		href = strings.NewReplacer("\t", "", "\r", "", "\n", "").Replace(href)
	}
	if href == "" || href[0] == '#' || len(href) > maxURLLen {
		return "", false
	}
	u, err := url.Parse(href)
	if err != nil {
		return "", false
	}
	if u.Scheme == "" {
		if base == nil {
			return "", false // relative: nowhere to redirect to
		}
		u = base.ResolveReference(u)
		href = u.String()
	}
	switch strings.ToLower(u.Scheme) {
	case "http", "https":
	default:
		return "", false // mailto:, tel:, sms:, javascript:, data:, cid: ...
	}
	if u.Host == "" || unsubscribeURL(href) {
		return "", false
	}
	return href, true
}

// unsubscribeURL: a sender's own unsubscribe link is never tracked (a
// scanner following it must not look like a click, and mailbox
// providers distrust redirected unsubscribe links).
func unsubscribeURL(u string) bool {
	return containsFold(u, "unsubscribe") || containsFold(u, "optout") || containsFold(u, "opt-out")
}

func containsFold(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if strings.EqualFold(s[i:i+len(sub)], sub) {
			return true
		}
	}
	return false
}

// hrefSpan finds the value of the first href attribute in the raw start
// tag t ("<a ...>"), following the HTML tokenizer's attribute rules, and
// returns its byte span (inside the quotes when quoted).
func hrefSpan(t []byte) (vs, ve int, ok bool) {
	i := 1
	for i < len(t) && !isSpace(t[i]) && t[i] != '/' && t[i] != '>' {
		i++ // tag name
	}
	for i < len(t) {
		for i < len(t) && (isSpace(t[i]) || t[i] == '/') {
			i++
		}
		if i >= len(t) || t[i] == '>' {
			return 0, 0, false
		}
		ns := i
		i++ // an attribute name may start with '='
		for i < len(t) && !isSpace(t[i]) && t[i] != '/' && t[i] != '>' && t[i] != '=' {
			i++
		}
		name := t[ns:i]
		for i < len(t) && isSpace(t[i]) {
			i++
		}
		if i >= len(t) || t[i] != '=' {
			continue // no value
		}
		i++
		for i < len(t) && isSpace(t[i]) {
			i++
		}
		if i >= len(t) {
			return 0, 0, false
		}
		switch q := t[i]; q {
		case '"', '\'':
			vs = i + 1
			j := bytes.IndexByte(t[vs:], q)
			if j < 0 {
				return 0, 0, false
			}
			ve = vs + j
			i = ve + 1
		default:
			vs = i
			for i < len(t) && !isSpace(t[i]) && t[i] != '>' {
				i++
			}
			ve = i
		}
		if bytes.EqualFold(name, []byte("href")) {
			return vs, ve, true
		}
	}
	return 0, 0, false
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\f' || c == '\r' }
