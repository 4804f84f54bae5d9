package smtpsrc

import (
	"bytes"
	"io"
	"sync"

	"github.com/sluice-mta/sluice/pipeline"
)

// Bare line endings: the values of config.SMTPListener.BareLineEnding.
const (
	BareReject    = "reject"    // refuse the message with 554 5.6.0 (default)
	BareNormalize = "normalize" // turn every bare CR and bare LF into CRLF
)

// scanData reports whether data contains a bare line ending (a CR not
// followed by LF, or an LF not preceded by CR), whether it contains a NUL
// byte, and the length of its longest line counting the LF (lines end at
// LF; a last line without LF counts its bytes plus 2, as if CRLF
// followed). It makes three vectorised passes (IndexByte/Count) and has
// no per-byte loop of its own.
func scanData(data []byte) (bare, nul bool, longest int) {
	nul = bytes.IndexByte(data, 0) >= 0
	lfs, start := 0, 0
	for {
		j := bytes.IndexByte(data[start:], '\n')
		if j < 0 {
			break
		}
		i := start + j
		if i == 0 || data[i-1] != '\r' {
			bare = true
		}
		if n := i + 1 - start; n > longest {
			longest = n
		}
		lfs++
		start = i + 1
	}
	if rest := len(data) - start; rest > 0 && rest+2 > longest {
		longest = rest + 2
	}
	// When every LF is preceded by its own CR, exactly lfs CRs are paired
	// and any other CR is bare.
	if !bare {
		bare = bytes.Count(data, crBytes) != lfs
	}
	return bare, nul, longest
}

var crBytes = []byte{'\r'}

// normalizeLineEndings appends src to dst with every bare CR and every bare
// LF replaced by CRLF; CRLF pairs are copied unchanged. It returns the
// extended dst. NUL bytes are copied as they are (scanData finds them).
func normalizeLineEndings(dst, src []byte) []byte {
	for len(src) > 0 {
		i := bytes.IndexAny(src, "\r\n")
		if i < 0 {
			return append(dst, src...)
		}
		dst = append(dst, src[:i]...)
		if src[i] == '\r' && i+1 < len(src) && src[i+1] == '\n' {
			i++ // a CRLF pair: consume both
		}
		dst = append(dst, '\r', '\n')
		src = src[i+1:]
	}
	return dst
}

// bufPool holds message buffers. Buffers that grew beyond maxPooledBuf are
// dropped rather than pooled, so one huge message does not pin memory.
var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

const maxPooledBuf = 1 << 20

func getBuf() *bytes.Buffer { return bufPool.Get().(*bytes.Buffer) }

func putBuf(b *bytes.Buffer) {
	if b == nil || b.Cap() > maxPooledBuf {
		return
	}
	b.Reset()
	bufPool.Put(b)
}

// readData reads the whole message into buf, refusing more than limit
// bytes with pipeline.ErrTooBig (go-smtp enforces the same limit first; this
// is the belt to its braces, and covers BDAT). limit <= 0 means no limit.
func readData(buf *bytes.Buffer, r io.Reader, limit int64) error {
	if limit > 0 {
		lr := &io.LimitedReader{R: r, N: limit + 1}
		if _, err := buf.ReadFrom(lr); err != nil {
			return err
		}
		if int64(buf.Len()) > limit {
			return pipeline.ErrTooBig
		}
		return nil
	}
	_, err := buf.ReadFrom(r)
	return err
}
