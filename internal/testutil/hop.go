package testutil

import (
	"bufio"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// HopOptions configure StartHop.
type HopOptions struct {
	IP   string // default 127.0.0.1
	Port int    // default: any free port
	// Extensions are the EHLO keywords the hop advertises, e.g.
	// "8BITMIME", "SMTPUTF8", "DSN", "PIPELINING", "SIZE 1000000".
	// Nothing else is offered (no STARTTLS).
	Extensions []string
	// Greeting is the host name in the greeting and EHLO reply; default
	// "hop.test".
	Greeting string
}

// HopMessage is one message a Hop accepted: the MAIL and RCPT command
// lines exactly as received (without CRLF) and the data, dot-unstuffed,
// with CRLF line endings.
type HopMessage struct {
	Mail  string
	Rcpts []string
	Data  []byte
}

// Hop is a strict next hop on loopback written for Sluice's tests, where
// go-smtp's server is too lenient or cannot withhold an extension (it
// always offers 8BITMIME). It records the command lines exactly as they
// arrived, and it refuses what RFC 5321 refuses:
//   - a path that is not "<>" or "<Mailbox>" by the RFC 5321 grammar
//     (a local part with a space must be quoted): 501 5.1.3;
//   - a parameter of an extension it did not advertise (BODY without
//     8BITMIME, SMTPUTF8, RET/ENVID/NOTIFY/ORCPT without DSN, SIZE):
//     555 5.5.4 (RFC 5321 section 4.1.1.11);
//   - non-ASCII in a path without SMTPUTF8: 553 5.6.7.
//
// Messages is safe to call from any goroutine.
type Hop struct {
	Addr string
	IP   string
	Port int

	opts HopOptions
	ln   net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex
	msgs []HopMessage
	cmds []string
}

// StartHop starts a Hop and stops it when the test ends.
func StartHop(t testing.TB, o HopOptions) *Hop {
	t.Helper()
	if o.IP == "" {
		o.IP = "127.0.0.1"
	}
	if o.Greeting == "" {
		o.Greeting = "hop.test"
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(o.IP, strconv.Itoa(o.Port)))
	if err != nil {
		t.Fatalf("hop listen: %v", err)
	}
	h := &Hop{Addr: ln.Addr().String(), IP: o.IP, Port: ln.Addr().(*net.TCPAddr).Port, opts: o, ln: ln}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.wg.Add(1)
			go func() {
				defer h.wg.Done()
				defer c.Close()
				h.serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		h.wg.Wait()
	})
	return h
}

// Messages returns the messages accepted so far.
func (h *Hop) Messages() []HopMessage {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]HopMessage(nil), h.msgs...)
}

// Commands returns every command line received so far, in order.
func (h *Hop) Commands() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.cmds...)
}

func (h *Hop) offers(ext string) bool {
	for _, e := range h.opts.Extensions {
		k, _, _ := strings.Cut(e, " ")
		if strings.EqualFold(k, ext) {
			return true
		}
	}
	return false
}

func (h *Hop) serve(c net.Conn) {
	br := bufio.NewReader(c)
	reply := func(s string) {
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, s+"\r\n")
	}
	read := func() (string, bool) {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		l, err := br.ReadString('\n')
		if err != nil {
			return "", false
		}
		return strings.TrimSuffix(strings.TrimSuffix(l, "\n"), "\r"), true
	}
	reply("220 " + h.opts.Greeting + " ESMTP strict test hop")
	var cur *HopMessage
	for {
		line, ok := read()
		if !ok {
			return
		}
		h.mu.Lock()
		h.cmds = append(h.cmds, line)
		h.mu.Unlock()
		verb, _, _ := strings.Cut(line, " ")
		switch strings.ToUpper(verb) {
		case "EHLO":
			lines := append([]string{h.opts.Greeting}, h.opts.Extensions...)
			for i, l := range lines {
				sep := "-"
				if i == len(lines)-1 {
					sep = " "
				}
				reply("250" + sep + l)
			}
		case "HELO":
			reply("250 " + h.opts.Greeting)
		case "MAIL":
			if cur != nil {
				reply("503 5.5.1 nested MAIL")
				continue
			}
			if r := h.checkCommand(line, "MAIL FROM:", true); r != "" {
				reply(r)
				continue
			}
			cur = &HopMessage{Mail: line}
			reply("250 2.1.0 sender ok")
		case "RCPT":
			if cur == nil {
				reply("503 5.5.1 MAIL first")
				continue
			}
			if r := h.checkCommand(line, "RCPT TO:", false); r != "" {
				reply(r)
				continue
			}
			cur.Rcpts = append(cur.Rcpts, line)
			reply("250 2.1.5 recipient ok")
		case "DATA":
			if cur == nil || len(cur.Rcpts) == 0 {
				reply("503 5.5.1 no valid recipients")
				continue
			}
			reply("354 go ahead")
			var data strings.Builder
			for {
				l, ok := read()
				if !ok {
					return
				}
				if l == "." {
					break
				}
				data.WriteString(strings.TrimPrefix(l, ".") + "\r\n")
			}
			cur.Data = []byte(data.String())
			h.mu.Lock()
			h.msgs = append(h.msgs, *cur)
			h.mu.Unlock()
			cur = nil
			reply("250 2.0.0 accepted as hop-" + strconv.Itoa(len(h.Messages())))
		case "RSET":
			cur = nil
			reply("250 2.0.0 reset")
		case "NOOP":
			reply("250 2.0.0 ok")
		case "QUIT":
			reply("221 2.0.0 bye")
			return
		default:
			reply("502 5.5.2 command not implemented")
		}
	}
}

// checkCommand checks a MAIL or RCPT line: the path by the RFC 5321
// grammar, then each parameter against the advertised extensions. It
// returns the refusal, or "" when the line is acceptable.
func (h *Hop) checkCommand(line, prefix string, mail bool) string {
	if len(line) < len(prefix) || !strings.EqualFold(line[:len(prefix)], prefix) {
		return "501 5.5.4 syntax: " + prefix + "<address>"
	}
	rest := line[len(prefix):]
	path, params, ok := splitPath(rest)
	if !ok || !(mail && path == "") && !validMailbox(path) {
		return "501 5.1.3 bad address syntax"
	}
	for _, b := range []byte(path) {
		if b >= 0x80 && !h.offers("SMTPUTF8") {
			return "553 5.6.7 non-ASCII address needs SMTPUTF8"
		}
	}
	for _, p := range strings.Fields(params) {
		k, v, _ := strings.Cut(p, "=")
		need := ""
		switch strings.ToUpper(k) {
		case "BODY":
			need = "8BITMIME"
			if strings.EqualFold(v, "BINARYMIME") {
				need = "BINARYMIME"
			}
		case "SMTPUTF8":
			need = "SMTPUTF8"
		case "SIZE":
			need = "SIZE"
		case "RET", "ENVID", "NOTIFY", "ORCPT":
			need = "DSN"
			if !validXtext(v) {
				return "501 5.5.4 bad xtext in " + k
			}
		default:
			return "555 5.5.4 unknown parameter " + k
		}
		if !h.offers(need) {
			return "555 5.5.4 parameter " + k + " needs " + need + ", not offered"
		}
	}
	return ""
}

// splitPath splits "<path> params" (no space allowed before "<").
func splitPath(s string) (path, params string, ok bool) {
	if !strings.HasPrefix(s, "<") {
		return "", "", false
	}
	// Find the closing '>' outside a quoted string.
	inQuote := false
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case inQuote && c == '\\':
			i++
		case c == '"':
			inQuote = !inQuote
		case !inQuote && c == '>':
			rest := s[i+1:]
			if rest != "" && rest[0] != ' ' {
				return "", "", false
			}
			return s[1:i], strings.TrimSpace(rest), true
		}
	}
	return "", "", false
}

// validMailbox checks Local-part "@" Domain of RFC 5321 section 4.1.2
// (with RFC 6531's UTF-8 allowed in atoms and domains).
func validMailbox(s string) bool {
	at := strings.LastIndexByte(s, '@')
	if at <= 0 || at == len(s)-1 {
		return false
	}
	local, domain := s[:at], s[at+1:]
	if strings.HasPrefix(local, `"`) {
		if len(local) < 2 || !strings.HasSuffix(local, `"`) {
			return false
		}
		q := local[1 : len(local)-1]
		for i := 0; i < len(q); i++ {
			c := q[i]
			switch {
			case c == '\\':
				if i+1 >= len(q) || q[i+1] < 32 || q[i+1] > 126 {
					return false
				}
				i++
			case c == '"' || c < 32 || c == 127:
				return false
			}
		}
	} else {
		for _, atom := range strings.Split(local, ".") {
			if atom == "" {
				return false
			}
			for i := 0; i < len(atom); i++ {
				c := atom[i]
				if c < 0x80 && !isAtext(c) {
					return false
				}
			}
		}
	}
	if strings.HasPrefix(domain, "[") {
		return strings.HasSuffix(domain, "]")
	}
	for _, label := range strings.Split(domain, ".") {
		if label == "" || strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if c < 0x80 && !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

func isAtext(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// validXtext checks RFC 3461 xtext: "!" to "~" except "+" and "=", or
// "+" and two upper-case hex digits.
func validXtext(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '+':
			if i+2 >= len(s) || !isUpperHex(s[i+1]) || !isUpperHex(s[i+2]) {
				return false
			}
			i += 2
		case c < '!' || c > '~' || c == '=':
			return false
		}
	}
	return true
}

func isUpperHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'A' && c <= 'F' }
