package mailtext

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestReceived(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("", 3600))
	v4 := netip.MustParseAddr("192.0.2.1")
	v6 := netip.MustParseAddr("2001:db8::1")
	for _, tc := range []struct {
		tr   Trace
		want string
	}{
		{Trace{Source: "smtp", HELO: "c.example", RemoteIP: v4, For: "b@x.test"},
			"from c.example ([192.0.2.1]) by mx.test with ESMTP id 01JTEST for <b@x.test>; Fri, 02 Jan 2026 03:04:05 +0100"},
		{Trace{Source: "smtp", HELO: "[IPv6:2001:db8::1]", RemoteIP: v6, TLS: true},
			"from [IPv6:2001:db8::1] ([IPv6:2001:db8::1]) by mx.test with ESMTPS id 01JTEST; Fri, 02 Jan 2026 03:04:05 +0100"},
		{Trace{Source: "smtp", HELO: "evil (x); by", RemoteIP: v4, TLS: true, Auth: "u", For: "b@x.test"},
			"from evil__x___by ([192.0.2.1]) by mx.test with ESMTPSA id 01JTEST for <b@x.test>; Fri, 02 Jan 2026 03:04:05 +0100"},
		{Trace{Source: "smtp", For: "b@x.test"},
			"from unknown ([unknown]) by mx.test with ESMTP id 01JTEST for <b@x.test>; Fri, 02 Jan 2026 03:04:05 +0100"},
		{Trace{Source: "http", RemoteIP: netip.MustParseAddr("::ffff:192.0.2.9"), TLS: true, Auth: "key(1)"},
			"from [192.0.2.9] by mx.test with HTTPS (key key_1_) id 01JTEST; Fri, 02 Jan 2026 03:04:05 +0100"},
	} {
		tc.tr.By, tc.tr.ID, tc.tr.Date = "mx.test", "01JTEST", now
		if got := Received(tc.tr); got != tc.want {
			t.Errorf("got  %q\nwant %q", got, tc.want)
		}
	}
}

func TestOneLine(t *testing.T) {
	for in, want := range map[string]string{
		"plain":                   "plain",
		"a\r\n250 2.0.0 fake\x00": "a 250 2.0.0 fake",
		"  tabs\tand   spaces  ":  "tabs and spaces",
		"bad \xff utf8":           "bad utf8",
		"c1 \u0085 control":       "c1 control",
		strings.Repeat("é", 10):   "éé", // cut at 5 bytes on a rune boundary
	} {
		max := 0
		if strings.HasPrefix(in, "é") {
			max = 5
		}
		if got := OneLine(in, max); got != want {
			t.Errorf("OneLine(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTLSVersionName(t *testing.T) {
	if TLSVersionName(0x0304) != "TLS1.3" || TLSVersionName(0x0303) != "TLS1.2" || TLSVersionName(1) != "TLS" {
		t.Fatal("names")
	}
}
