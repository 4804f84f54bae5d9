package loadgen

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"
)

// seqWidth is the fixed width of the sequence number written into every
// message, so templates can be patched in place without reallocating.
const seqWidth = 10

// NewRunID returns a short random identifier for one benchmark run. The sink
// uses it to tell this run's messages from stragglers of earlier runs.
func NewRunID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// template is a pre-built payload with fixed-width slots for the sequence
// number; put patches the slots in place.
type template struct {
	buf   []byte
	slots []int // offsets of seqWidth-digit fields
}

func (t *template) put(seq int64) {
	for _, off := range t.slots {
		putDigits(t.buf[off:off+seqWidth], seq)
	}
}

// putSlot patches only slot i (used by batch templates: one seq per item).
func (t *template) putSlot(i int, seq int64) {
	off := t.slots[i]
	putDigits(t.buf[off:off+seqWidth], seq)
}

func putDigits(dst []byte, v int64) {
	for i := len(dst) - 1; i >= 0; i-- {
		dst[i] = byte('0' + v%10)
		v /= 10
	}
}

const seqPlaceholder = "0000000000"

// bodyAlphabet never starts a line with '.', so no dot-stuffing is needed.
const bodyAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// appendBodyLines appends text lines of up to 76 characters terminated by eol
// until exactly n bytes were appended (n >= 0).
func appendBodyLines(b []byte, n int, eol string) []byte {
	line := 0
	for n > 0 {
		l := 76
		if n < l+len(eol) {
			l = n - len(eol)
		}
		if l < 0 { // too little room for even an empty line: pad with text
			l = n
			for i := 0; i < l; i++ {
				b = append(b, 'x')
			}
			return b
		}
		// avoid leaving a remainder shorter than one line terminator
		if rest := n - l - len(eol); rest > 0 && rest < len(eol) {
			l -= len(eol) - rest
		}
		for i := 0; i < l; i++ {
			b = append(b, bodyAlphabet[(i+line)%len(bodyAlphabet)])
		}
		b = append(b, eol...)
		n -= l + len(eol)
		line++
	}
	return b
}

// newSMTPTemplate builds a complete RFC 5322 message of exactly size bytes
// (or the header size, if larger), in wire form: CRLF line endings and the
// terminating ".\r\n" appended (not counted in size).
func newSMTPTemplate(from, to, runID string, size int, date time.Time) *template {
	t := &template{}
	b := make([]byte, 0, size+512)
	b = fmt.Appendf(b, "From: <%s>\r\nTo: <%s>\r\n", from, to)
	b = append(b, "Subject: bench "...)
	t.slots = append(t.slots, len(b))
	b = append(b, seqPlaceholder...)
	b = append(b, ' ')
	b = append(b, runID...)
	b = append(b, "\r\nDate: "...)
	b = append(b, date.Format(time.RFC1123Z)...)
	b = append(b, "\r\nMessage-ID: <"...)
	t.slots = append(t.slots, len(b))
	b = append(b, seqPlaceholder...)
	b = append(b, '.')
	b = append(b, runID...)
	b = append(b, "@sluice-bench.invalid>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"...)
	rest := size - len(b)
	if rest < 2 {
		rest = 2
	}
	b = appendBodyLines(b, rest, "\r\n")
	b = append(b, ".\r\n"...)
	t.buf = b
	return t
}

// bodyText returns exactly n bytes of plain text in lines of 76 characters
// separated by "\n" (the HTTP API's "text" field before JSON escaping).
func bodyText(n int) []byte {
	return appendBodyLines(make([]byte, 0, n), n, "\n")
}
