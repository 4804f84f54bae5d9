// Package mailtext holds the small pieces of mail text every part of
// Sluice writes the same way: one safe line from a remote or stage text,
// the Received trace field, address literals, HELO tokens and TLS version
// names. It exists so that each is written once (SMTP and HTTP sources,
// delivery, DSNs) and cannot drift apart.
//
// Not here: MIME (emersion/go-message does that) and header folding
// (pipeline.FoldField folds the fields Sluice adds; the HTTP API's
// composer folds the message it builds).
package mailtext

import (
	"crypto/tls"
	"encoding/binary"
	"net/netip"
	"strings"
	"time"
	"unicode/utf8"
)

// OneLine makes s safe as one line of a reply, a DSN or a log: control
// characters (CR, LF, NUL, TAB, DEL, C1) and U+FFFD become spaces, runs of
// spaces collapse to one, the ends are trimmed, and the result is cut to
// at most max bytes on a UTF-8 boundary (max <= 0: no limit).
func OneLine(s string, max int) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f || c >= 0x80 || (c == ' ' && i+1 < len(s) && s[i+1] == ' ') {
			clean = false
			break
		}
	}
	if !clean {
		var b strings.Builder
		b.Grow(len(s))
		space := false
		for _, r := range s {
			if r < 0x20 || r == 0x7f || r == utf8.RuneError || (r >= 0x80 && r < 0xa0) {
				r = ' '
			}
			if r == ' ' {
				if space {
					continue
				}
				space = true
			} else {
				space = false
			}
			b.WriteRune(r)
		}
		s = b.String()
	}
	s = strings.TrimSpace(s)
	if max > 0 && len(s) > max {
		cut := max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = strings.TrimSpace(s[:cut])
	}
	return s
}

// TLSVersionName names a TLS version as events and logs show it:
// "TLS1.2", "TLS1.3"; "TLS" for an unknown one.
func TLSVersionName(v uint16) string {
	switch v {
	case tls.VersionTLS10:
		return "TLS1.0"
	case tls.VersionTLS11:
		return "TLS1.1"
	case tls.VersionTLS12:
		return "TLS1.2"
	case tls.VersionTLS13:
		return "TLS1.3"
	}
	return "TLS"
}

// AddressLiteral formats ip as an RFC 5321 section 4.1.3 address
// literal: [192.0.2.1] or [IPv6:2001:db8::1]; "[unknown]" when invalid.
func AddressLiteral(ip netip.Addr) string {
	switch {
	case !ip.IsValid():
		return "[unknown]"
	case ip.Is4() || ip.Is4In6():
		return "[" + ip.Unmap().String() + "]"
	default:
		return "[IPv6:" + ip.WithZone("").String() + "]"
	}
}

// HeloToken makes a client-supplied HELO name safe inside a Received
// field: anything but letters, digits and "-._:[]" becomes '_', at most
// 255 bytes; "unknown" when empty.
func HeloToken(h string) string {
	if h == "" {
		return "unknown"
	}
	if len(h) > 255 {
		h = h[:255]
	}
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-._:[]", r) {
			return r
		}
		return '_'
	}, h)
}

// Trace is what a Received field says about one hop.
type Trace struct {
	Source   string     // "smtp" or "http"
	HELO     string     // SMTP: the client's EHLO/HELO name
	RemoteIP netip.Addr // the client's address
	By       string     // our host name on the listener
	TLS      bool       // the client used TLS (ESMTPS, HTTPS)
	Auth     string     // the authenticated identity ("" when none)
	ID       string     // our message id
	For      string     // the one recipient, or "" (never name one of several: Bcc)
	Date     time.Time
}

// Received builds the value of the Received field Sluice prepends to a
// message it accepts (RFC 5321 section 4.4; protocol names from RFC 3848
// and, for HTTP, "HTTP"/"HTTPS"):
//
//	SMTP: from HELO ([ip]) by HOST with ESMTP[S][A] id ID [for <rcpt>]; DATE
//	HTTP: from [ip] by HOST with HTTP[S] (key KEY) id ID [for <rcpt>]; DATE
func Received(t Trace) string {
	var b strings.Builder
	b.Grow(160)
	b.WriteString("from ")
	if t.Source == "http" {
		b.WriteString(AddressLiteral(t.RemoteIP))
	} else {
		b.WriteString(HeloToken(t.HELO))
		b.WriteString(" (")
		b.WriteString(AddressLiteral(t.RemoteIP))
		b.WriteByte(')')
	}
	b.WriteString(" by ")
	b.WriteString(t.By)
	b.WriteString(" with ")
	if t.Source == "http" {
		b.WriteString("HTTP")
		if t.TLS {
			b.WriteByte('S')
		}
		if t.Auth != "" {
			b.WriteString(" (key ")
			b.WriteString(HeloToken(t.Auth))
			b.WriteByte(')')
		}
	} else {
		b.WriteString("ESMTP")
		if t.TLS {
			b.WriteByte('S')
		}
		if t.Auth != "" {
			b.WriteByte('A')
		}
	}
	b.WriteString(" id ")
	b.WriteString(t.ID)
	if t.For != "" {
		b.WriteString(" for <")
		b.WriteString(t.For)
		b.WriteByte('>')
	}
	b.WriteString("; ")
	b.WriteString(t.Date.Format(time.RFC1123Z))
	return b.String()
}

// IsASCII reports whether s is all 7-bit: no byte above 127.
func IsASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// Has8Bit reports whether b holds a byte above 127 (8-bit content, RFC
// 6152). It reads 8 bytes at a time: it runs over whole messages.
func Has8Bit(b []byte) bool {
	const hi = 0x8080808080808080
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b)&hi != 0 {
			return true
		}
		b = b[8:]
	}
	for _, c := range b {
		if c >= 0x80 {
			return true
		}
	}
	return false
}
