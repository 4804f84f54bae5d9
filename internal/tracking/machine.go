package tracking

import (
	"net/http"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

// Machine reasons (pipeline.Engagement.MachineReason).
const (
	ReasonProxy       = "proxy_user_agent"
	ReasonScanner     = "scanner_user_agent"
	ReasonBot         = "bot_user_agent"
	ReasonHead        = "head_request"
	ReasonTooSoon     = "too_soon"
	ReasonNoUserAgent = "no_user_agent"
)

// Substrings of User-Agent values (compared in lower case) by class.
// Image proxies fetch every image of a message when it is delivered or
// opened, whoever reads it; scanners follow every link of a message
// before a person sees it.
var (
	proxyAgents = []string{
		"googleimageproxy", "ggpht.com", // Gmail
		"yahoomailproxy", // Yahoo
		"outlook-ios", "microsoft office existence discovery",
	}
	scannerAgents = []string{
		"barracuda", "mimecast", "proofpoint", "ppops", "symantec", "messagelabs", "forcepoint",
		"trend micro", "trendmicro", "sophos", "fortiguard", "cisco", "ironport", "bingpreview",
		"safelinks", "zscaler", "urlscan", "virustotal", "checkpoint", "avanan", "abnormal",
	}
	botAgents = []string{
		"bot", "spider", "crawler", "curl/", "wget/", "python-requests", "python-urllib", "go-http-client",
		"java/", "okhttp", "libwww", "headlesschrome", "phantomjs", "httpclient", "slackbot", "facebookexternalhit",
	}
)

// classify returns the user-agent class of r and, when the request
// looks automated, why. accepted is when the message was accepted;
// window the tenant's machine_window (negative: off).
func classify(r *http.Request, accepted, now time.Time, window time.Duration) (class string, machine bool, reason string) {
	ua := strings.ToLower(strings.TrimSpace(r.Header.Get("User-Agent")))
	switch {
	case ua == "":
		class, reason = pipeline.AgentUnknown, ReasonNoUserAgent
	case ua == "mozilla/5.0":
		// Apple Mail Privacy Protection's proxy sends exactly this.
		class, reason = pipeline.AgentProxy, ReasonProxy
	case containsAny(ua, proxyAgents):
		class, reason = pipeline.AgentProxy, ReasonProxy
	case containsAny(ua, scannerAgents):
		class, reason = pipeline.AgentScanner, ReasonScanner
	case containsAny(ua, botAgents):
		class, reason = pipeline.AgentBot, ReasonBot
	default:
		class = pipeline.AgentBrowser
	}
	switch {
	case reason != "":
	case r.Method == http.MethodHead:
		reason = ReasonHead
	case window > 0 && !accepted.IsZero() && now.Sub(accepted) < window:
		reason = ReasonTooSoon
	}
	return class, reason != "", reason
}

func containsAny(s string, subs []string) bool {
	for _, x := range subs {
		if strings.Contains(s, x) {
			return true
		}
	}
	return false
}
