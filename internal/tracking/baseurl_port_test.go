package tracking

import (
	"net/http"
	"strings"
	"testing"
)

// TestBaseURLDefaultPort: a base_url written with its scheme's default
// port routes the requests browsers send for it, whose Host has no port
// (RFC 9110 section 7.2), and the links in mail leave the port out.
func TestBaseURLDefaultPort(t *testing.T) {
	for _, base := range []string{"https://t.acme.test:443", "http://t.acme.test:80"} {
		e := newEnv(t, Options{Tenants: map[string]Policy{"acme": {BaseURL: base}}})
		p := e.link(KindClick, "https://shop.example/")
		for _, host := range []string{"t.acme.test", "t.acme.test:443", "t.acme.test:80"} {
			if resp := e.do("GET", host, p, browserUA, ""); resp.StatusCode != http.StatusFound {
				t.Errorf("base_url %s, Host %s: %d", base, host, resp.StatusCode)
			}
		}
		if got := e.tr.opts.Load().policy("acme").BaseURL; strings.HasSuffix(got, ":443") || strings.HasSuffix(got, ":80") {
			t.Errorf("base_url %s is used as %s", base, got)
		}
	}
}
