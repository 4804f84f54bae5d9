package tracking

import (
	"bytes"
	"strings"
)

// RewriteText appends the plain text src to dst with each http:// or
// https:// URL in it replaced by link(u), skipping those skip refuses and
// unsubscribe links, and reports how many it replaced. A URL runs to the
// next white space or one of < > " ' and loses trailing punctuation
// (". , ; : ! ?" and a closing bracket without its opening one), as
// mail clients linkify it.
func RewriteText(dst, src []byte, link func(string) string, skip func(string) bool) ([]byte, int) {
	n := 0
	for {
		i := indexURL(src)
		if i < 0 {
			return append(dst, src...), n
		}
		j := i
		for j < len(src) && !isSpace(src[j]) && src[j] != '<' && src[j] != '>' && src[j] != '"' && src[j] != '\'' {
			j++
		}
		j = i + trimURLEnd(src[i:j])
		u := string(src[i:j])
		dst = append(dst, src[:i]...)
		if len(u) > len("https://") && len(u) <= maxURLLen && !unsubscribeURL(u) && (skip == nil || !skip(u)) {
			dst = append(dst, link(u)...)
			n++
		} else {
			dst = append(dst, u...)
		}
		src = src[j:]
	}
}

// indexURL returns the index of the first "http://" or "https://"
// (any case) in b that does not follow a letter or digit, or -1.
func indexURL(b []byte) int {
	off := 0
	for {
		k := bytes.Index(b[off:], []byte("://"))
		if k < 0 {
			return -1
		}
		k += off
		for _, s := range []string{"https", "http"} {
			if k >= len(s) && strings.EqualFold(string(b[k-len(s):k]), s) {
				st := k - len(s)
				if st == 0 || !isAlnum(b[st-1]) {
					return st
				}
			}
		}
		off = k + 3
	}
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func trimURLEnd(u []byte) int {
	n := len(u)
	for n > 0 {
		switch c := u[n-1]; c {
		case '.', ',', ';', ':', '!', '?':
			n--
			continue
		case ')', ']', '}':
			open := map[byte]byte{')': '(', ']': '[', '}': '{'}[c]
			if bytes.Count(u[:n], []byte{open}) < bytes.Count(u[:n], []byte{c}) {
				n--
				continue
			}
		}
		break
	}
	return n
}
