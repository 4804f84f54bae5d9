package delivery

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/internal/mailtext"
	"github.com/sluice-mta/sluice/pipeline"
)

// Limits on what we accept from a remote server.
const (
	maxReplyLine  = 2048 // bytes per reply line (RFC 5321 says 512; be lenient)
	maxReplyLines = 256  // lines per multi-line reply
	maxReplyText  = 1000 // bytes of remote text kept in an error
)

// reply is one SMTP reply: its code and the text of each line (without the
// "250-" prefix).
type reply struct {
	code  int
	lines []string
}

func (r reply) positive() bool { return r.code >= 200 && r.code < 400 }

// enhanced returns the RFC 3463 code at the start of the first line, if any
// and if its class matches the reply code, and the text of all lines with
// the repeated enhanced code stripped, joined by spaces and sanitised.
func (r reply) split() (pipeline.EnhancedCode, string) {
	var enh pipeline.EnhancedCode
	prefix := ""
	if len(r.lines) > 0 {
		first, _, _ := strings.Cut(r.lines[0], " ")
		if e, err := pipeline.ParseEnhancedCode(first); err == nil && e[0] == r.code/100 {
			enh, prefix = e, first
		}
	}
	var b strings.Builder
	for i, l := range r.lines {
		if prefix != "" {
			l = strings.TrimPrefix(strings.TrimPrefix(l, prefix), " ")
		}
		l = strings.TrimSpace(l)
		if l == "" {
			continue
		}
		if i > 0 && b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(l)
		if b.Len() > maxReplyText {
			break
		}
	}
	return enh, sanitize(b.String(), maxReplyText)
}

// String formats the reply on one line, e.g. "550 5.1.1 no such user".
func (r reply) String() string {
	enh, text := r.split()
	s := strconv.Itoa(r.code)
	if enh != (pipeline.EnhancedCode{}) {
		s += " " + enh.String()
	}
	if text != "" {
		s += " " + text
	}
	return s
}

// sanitize makes a remote text one safe line of at most max bytes.
func sanitize(s string, max int) string { return mailtext.OneLine(s, max) }

// ReplyError is the Cause of every *pipeline.Error that carries a remote
// server's reply: it says which server said it and to which command. Use
// errors.As to get it, e.g. to write "Diagnostic-Code: smtp; ..." and
// "Remote-MTA" in a bounce, or to tell a remote verdict from a local one.
type ReplyError struct {
	Remote   pipeline.Remote
	Command  string // "greeting", "EHLO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "end of data", "RSET"
	Code     int
	Enhanced pipeline.EnhancedCode // zero when the server sent none
	Text     string                // the server's text, sanitised, without the enhanced code
}

func (e *ReplyError) Error() string {
	s := fmt.Sprintf("%s[%s] replied to %s: %d", e.Remote.Host, e.Remote.IP, e.Command, e.Code)
	if e.Enhanced != (pipeline.EnhancedCode{}) {
		s += " " + e.Enhanced.String()
	}
	return s + " " + e.Text
}

// replyError turns a negative reply into a *pipeline.Error as the
// reply-code table (Rules) prescribes: the remote's own code, enhanced
// code and text, with the exceptions the table lists.
func replyError(r reply, cmd string, remote pipeline.Remote) *pipeline.Error {
	return classify(r, cmd, remote)
}

// ErrConnection is the Cause (via errors.Is) of errors caused by a lost
// connection, a timeout or a cancelled context during a session.
var ErrConnection = errors.New("delivery: connection failed")

type connError struct {
	err error
}

func (e *connError) Error() string { return e.err.Error() }
func (e *connError) Unwrap() []error {
	return []error{ErrConnection, e.err}
}

// ioError turns a network failure while talking to remote about cmd into a
// temporary 451 4.4.2.
func ioError(ctx context.Context, err error, cmd string, remote pipeline.Remote) *pipeline.Error {
	what := "connection lost"
	dl, hasDL := ctx.Deadline()
	switch {
	case errors.Is(ctx.Err(), context.Canceled):
		what = "delivery cancelled"
		err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	case ctx.Err() != nil || (hasDL && !time.Now().Before(dl)):
		what = "delivery deadline exceeded"
		err = fmt.Errorf("%w (%v)", context.DeadlineExceeded, err)
	case errors.Is(err, os.ErrDeadlineExceeded):
		what = "timeout"
	case errors.Is(err, errBadReply):
		what = "protocol error"
	}
	return &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 4, 2},
		Message: fmt.Sprintf("%s during %s", what, cmd),
		Cause:   &connError{fmt.Errorf("%s[%s] %s: %w", remote.Host, remote.IP, cmd, err)}}
}

var (
	errBadReply  = errors.New("malformed SMTP reply")
	errInjection = errors.New("server sent data after its STARTTLS reply (possible injection)")
)

// readReply reads one possibly multi-line reply.
func readReply(br *bufio.Reader) (reply, error) {
	var r reply
	for n := 0; ; n++ {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull || (err == nil && len(line) > maxReplyLine) {
			return r, fmt.Errorf("%w: line longer than %d bytes", errBadReply, maxReplyLine)
		}
		if err != nil {
			if err == io.EOF && len(line) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return r, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) < 3 {
			return r, fmt.Errorf("%w: %q", errBadReply, line)
		}
		code := 0
		for _, c := range line[:3] {
			if c < '0' || c > '9' {
				return r, fmt.Errorf("%w: %q", errBadReply, line)
			}
			code = code*10 + int(c-'0')
		}
		if code < 100 {
			return r, fmt.Errorf("%w: %q", errBadReply, line)
		}
		more := len(line) > 3 && line[3] == '-'
		if len(line) > 3 && line[3] != '-' && line[3] != ' ' {
			return r, fmt.Errorf("%w: %q", errBadReply, line)
		}
		text := ""
		if len(line) > 4 {
			text = string(line[4:])
		}
		r.code = code // the last line's code wins if a server mixes them
		r.lines = append(r.lines, text)
		if !more {
			return r, nil
		}
		if n+1 >= maxReplyLines {
			return r, fmt.Errorf("%w: more than %d lines", errBadReply, maxReplyLines)
		}
	}
}

// writeData writes msg as the content of DATA: lines starting with "." get
// another "." (RFC 5321 section 4.5.2), a bare CR or bare LF becomes CRLF
// (they are invalid in SMTP and a relay that forwards them helps SMTP
// smuggling), the last line is terminated, and the ".\r\n" terminator is
// appended.
//
// It works a line at a time: one IndexByte finds the line's LF and another
// checks it for a CR before the CRLF, so the cost per byte is that of the
// vectorised search and the copy: 23 µs per 50 KB message against 140 µs
// for the byte-at-a-time loop it replaced (BenchmarkWriteData).
func writeData(w *bufio.Writer, msg []byte) error {
	start, i := 0, 0 // msg[start:i] is pending output; i is at a line start
	terminated := true
	for i < len(msg) {
		if msg[i] == '.' {
			w.Write(msg[start:i])
			w.WriteByte('.')
			start = i // the original dot goes out with the next chunk
		}
		line := msg[i:]
		lf := bytes.IndexByte(line, '\n')
		if lf >= 0 {
			line = line[:lf]
		}
		if cr := bytes.IndexByte(line, '\r'); cr >= 0 && (lf < 0 || cr != lf-1) {
			// A bare CR ends the line.
			w.Write(msg[start : i+cr])
			w.WriteString("\r\n")
			start, i = i+cr+1, i+cr+1
			continue
		}
		if lf < 0 {
			terminated = false // the last line has no line ending
			break
		}
		if end := i + lf; lf == 0 || msg[end-1] != '\r' {
			// A bare LF.
			w.Write(msg[start:end])
			w.WriteString("\r\n")
			start = end + 1
		}
		i += lf + 1
	}
	w.Write(msg[start:])
	if !terminated {
		w.WriteString("\r\n")
	}
	_, err := w.WriteString(".\r\n")
	return err
}

// validAddress reports whether addr can be put inside <> in a command.
func validAddress(addr string) bool {
	for i := 0; i < len(addr); i++ {
		c := addr[i]
		if c < 0x20 || c == 0x7f || c == '<' || c == '>' {
			return false
		}
	}
	return true
}

// parseExtensions reads the EHLO reply's keyword lines.
func parseExtensions(r reply) map[string]string {
	ext := make(map[string]string)
	for _, l := range r.lines[1:] {
		k, v, _ := strings.Cut(strings.TrimSpace(l), " ")
		if k == "" {
			continue
		}
		ext[strings.ToUpper(k)] = strings.TrimSpace(v)
	}
	return ext
}

// hostPort formats an address for dialing.
func hostPort(ip string, port int) string { return net.JoinHostPort(ip, strconv.Itoa(port)) }
