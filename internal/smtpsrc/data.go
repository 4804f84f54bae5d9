package smtpsrc

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
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

// bufPool holds message buffers (*[]byte). Buffers that grew beyond
// maxPooledBuf are dropped rather than pooled, so one huge message does not
// pin memory.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, minBuf); return &b }}

const (
	maxPooledBuf = 1 << 20
	minBuf       = 32 << 10
	// sizeSlack is added to a SIZE= declaration when sizing the buffer:
	// a client's count may be a little off (dot-stuffing, line ends).
	sizeSlack = 4 << 10
)

func getBuf() []byte { return (*bufPool.Get().(*[]byte))[:0] }

func putBuf(b []byte) {
	if cap(b) == 0 || cap(b) > maxPooledBuf {
		return
	}
	b = b[:0]
	bufPool.Put(&b)
}

// errOverBudget is readData's failure when the listener's in-flight byte
// budget cannot take the message.
var errOverBudget = errors.New("smtpsrc: in-flight byte budget exhausted")

// readData reads the whole message from r into buf (from the pool),
// refusing more than limit bytes with pipeline.ErrTooBig (go-smtp enforces
// the same limit first for DATA; this covers BDAT). limit <= 0 means no
// limit. hint is the size declared with MAIL SIZE= (0: none): the buffer
// is sized for it at once, so an honest declaration costs no regrowth
// copies. Every buffer is charged to b by its capacity before it is
// allocated (old and new while growing); when b cannot take it, readData
// stops with errOverBudget. It returns the data (in buf's array or a
// larger one) and the bytes charged, which the caller releases, also on
// error.
func readData(buf []byte, r io.Reader, limit, hint int64, b *budget) (data []byte, charged int64, err error) {
	buf = buf[:0]
	charged = int64(cap(buf))
	if !b.reserve(charged) {
		return buf, 0, errOverBudget
	}
	grow := func(want int64) error {
		if limit > 0 && want > limit+1 {
			want = limit + 1
		}
		if want <= int64(cap(buf)) {
			want = int64(cap(buf)) + minBuf
		}
		if !b.reserve(want) {
			return errOverBudget
		}
		nb := make([]byte, len(buf), want)
		copy(nb, buf)
		b.release(int64(cap(buf)))
		charged += want - int64(cap(buf))
		buf = nb
		return nil
	}
	if hint > 0 && int64(cap(buf)) < hint+sizeSlack {
		if err := grow(hint + sizeSlack); err != nil {
			return buf, charged, err
		}
	}
	for {
		if len(buf) == cap(buf) {
			// Probe with a small read before doubling: a message that
			// exactly fills the buffer must not double it to find EOF.
			var probe [512]byte
			n, rerr := io.ReadFull(r, probe[:])
			if n == 0 {
				if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
					rerr = nil
				}
				return buf, charged, rerr
			}
			if err := grow(2 * int64(cap(buf))); err != nil {
				return buf, charged, err
			}
			buf = append(buf, probe[:n]...)
			if rerr != nil {
				if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
					rerr = nil
				}
				return buf, charged, tooBig(buf, limit, rerr)
			}
			if err := tooBig(buf, limit, nil); err != nil {
				return buf, charged, err
			}
			continue
		}
		n, rerr := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err := tooBig(buf, limit, nil); err != nil {
			return buf, charged, err
		}
		if rerr == io.EOF {
			return buf, charged, nil
		}
		if rerr != nil {
			return buf, charged, rerr
		}
	}
}

func tooBig(buf []byte, limit int64, err error) error {
	if limit > 0 && int64(len(buf)) > limit {
		return pipeline.ErrTooBig
	}
	return err
}

// errSpill is receiveData's failure when the temporary file of a large
// message cannot be created, written or read (452 4.3.1).
var errSpill = errors.New("smtpsrc: spilling a large message to disk")

// receiveData is readData for a message that may be large: it reads up to
// spillAt bytes into buf as readData does; past that it writes what it
// has and the rest of the message to an unlinked temporary file in dir,
// through buf, so a session holds at most about spillAt bytes while the
// message arrives, however long that takes. After the end of data it
// charges b with the message's size and reads the file back into one
// buffer of exactly that size (not from the pool), which it returns; buf
// goes back to the pool. Errors are readData's, and errSpill (wrapping
// the cause) when the file fails. spillAt <= 0 means never spill.
func receiveData(buf []byte, r io.Reader, limit, hint int64, b *budget, spillAt int64, dir string) (data []byte, charged int64, err error) {
	if spillAt <= 0 || (limit > 0 && limit <= spillAt) {
		return readData(buf, r, limit, hint, b)
	}
	if hint > spillAt {
		hint = spillAt // sized for the part held in memory only
	}
	lr := &io.LimitedReader{R: r, N: spillAt}
	data, charged, err = readData(buf, lr, 0, hint, b)
	if err != nil || lr.N > 0 {
		return data, charged, err // the end of data came first
	}
	f, err := os.CreateTemp(dir, "sluice-smtp-*.tmp")
	if err != nil {
		return data, charged, fmt.Errorf("%w: %v", errSpill, err)
	}
	os.Remove(f.Name()) // anonymous from now on: nothing outlives a crash
	defer f.Close()
	scratch := data[:cap(data)]
	size := int64(len(data))
	if _, err := f.Write(data); err != nil {
		return data, charged, fmt.Errorf("%w: %v", errSpill, err)
	}
	for {
		n, rerr := r.Read(scratch)
		if n > 0 {
			size += int64(n)
			if limit > 0 && size > limit {
				return data, charged, pipeline.ErrTooBig
			}
			if _, err := f.Write(scratch[:n]); err != nil {
				return data, charged, fmt.Errorf("%w: %v", errSpill, err)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return data, charged, rerr
		}
	}
	// The whole message, in memory for the checks and the commit.
	b.release(charged)
	charged = 0
	putBuf(data)
	data = nil
	if !b.reserve(size) {
		return nil, 0, errOverBudget
	}
	charged = size
	data = make([]byte, size)
	if _, err := f.ReadAt(data, 0); err != nil {
		return data, charged, fmt.Errorf("%w: %v", errSpill, err)
	}
	return data, charged, nil
}
