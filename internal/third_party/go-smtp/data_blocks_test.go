package smtp

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"math/rand"
	"testing"
)

// byteWiseDataReader is upstream's dataReader.Read (go-smtp v0.25.1), one
// ReadByte at a time: the reference the block-wise version must match.
type byteWiseDataReader struct {
	r     *bufio.Reader
	state int
}

func (r *byteWiseDataReader) Read(b []byte) (n int, err error) {
	for n < len(b) && r.state != stateEOF {
		var c byte
		c, err = r.r.ReadByte()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			break
		}
		switch r.state {
		case stateBeginLine:
			if c == '.' {
				r.state = stateDot
				continue
			}
			if c == '\r' {
				r.state = stateCR
				break
			}
			r.state = stateData
		case stateDot:
			if c == '\r' {
				r.state = stateDotCR
				continue
			}
			r.state = stateData
		case stateDotCR:
			if c == '\n' {
				r.state = stateEOF
				continue
			}
			r.state = stateData
		case stateCR:
			if c == '\n' {
				r.state = stateBeginLine
				break
			}
			r.state = stateData
		case stateData:
			if c == '\r' {
				r.state = stateCR
			}
		}
		b[n] = c
		n++
	}
	if err == nil && r.state == stateEOF {
		err = io.EOF
	}
	return
}

// chunkReader returns its data in pieces of random length, as a socket
// does.
type chunkReader struct {
	data []byte
	rnd  *rand.Rand
	max  int
}

func (c *chunkReader) Read(b []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := 1 + c.rnd.Intn(c.max)
	if n > len(b) {
		n = len(b)
	}
	if n > len(c.data) {
		n = len(c.data)
	}
	copy(b, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

// readAllSizes reads r to its end with reads of random sizes, recording
// the output, each read's error, and what is left in br afterwards.
func readAllSizes(r io.Reader, br *bufio.Reader, rnd *rand.Rand) (out []byte, errs []error, rest []byte) {
	for {
		b := make([]byte, 1+rnd.Intn(300))
		n, err := r.Read(b)
		out = append(out, b[:n]...)
		if err != nil || n == 0 {
			errs = append(errs, err)
		}
		if err != nil {
			break
		}
	}
	rest, _ = io.ReadAll(br)
	return out, errs, rest
}

// TestDataReaderMatchesByteWise checks the block-wise dataReader against
// upstream's byte-at-a-time loop on random data made of the bytes that
// matter (CR, LF, '.') and others, split into random socket reads and read
// with random buffer sizes: same output, same errors, same bytes left for
// the command reader after the end of data.
func TestDataReaderMatchesByteWise(t *testing.T) {
	alphabet := []byte("\r\n.\r\n.ab")
	for seed := int64(0); seed < 3000; seed++ {
		rnd := rand.New(rand.NewSource(seed))
		data := make([]byte, rnd.Intn(2000))
		for i := range data {
			if rnd.Intn(4) == 0 {
				data[i] = 'x'
			} else {
				data[i] = alphabet[rnd.Intn(len(alphabet))]
			}
		}
		if rnd.Intn(2) == 0 {
			data = append(data, "\r\n.\r\nQUIT\r\n"...)
		}
		bufSize := 16 + rnd.Intn(200)
		maxChunk := 1 + rnd.Intn(100)
		readSeed := rnd.Int63()

		brA := bufio.NewReaderSize(&chunkReader{data: data, rnd: rand.New(rand.NewSource(seed)), max: maxChunk}, bufSize)
		gotOut, gotErrs, gotRest := readAllSizes(&dataReader{r: brA}, brA, rand.New(rand.NewSource(readSeed)))
		brB := bufio.NewReaderSize(&chunkReader{data: data, rnd: rand.New(rand.NewSource(seed)), max: maxChunk}, bufSize)
		wantOut, wantErrs, wantRest := readAllSizes(&byteWiseDataReader{r: brB}, brB, rand.New(rand.NewSource(readSeed)))

		if !bytes.Equal(gotOut, wantOut) {
			t.Fatalf("seed %d: output differs:\n got %q\nwant %q", seed, gotOut, wantOut)
		}
		if len(gotErrs) != len(wantErrs) || !errors.Is(gotErrs[len(gotErrs)-1], wantErrs[len(wantErrs)-1]) {
			t.Fatalf("seed %d: errors %v, want %v", seed, gotErrs, wantErrs)
		}
		if !bytes.Equal(gotRest, wantRest) {
			t.Fatalf("seed %d: left %q, want %q", seed, gotRest, wantRest)
		}
	}
}

// TestDataReaderLimit: MaxMessageBytes counts the unstuffed bytes, as
// upstream's did.
func TestDataReaderLimit(t *testing.T) {
	br := bufio.NewReader(bytes.NewReader([]byte("..abcdef\r\n.\r\n")))
	r := &dataReader{r: br, limited: true, n: 5}
	got, err := io.ReadAll(r)
	if !errors.Is(err, ErrDataTooLarge) || string(got) != ".abcd" {
		t.Fatalf("got %q, %v; want \".abcd\", ErrDataTooLarge", got, err)
	}
}

func benchmarkDataReader(b *testing.B, size int, bytewise bool) {
	var msg bytes.Buffer
	for msg.Len() < size {
		msg.WriteString("..abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvw\r\n")
	}
	msg.WriteString(".\r\n")
	data := msg.Bytes()
	out := make([]byte, 32<<10)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		br := bufio.NewReader(bytes.NewReader(data))
		var r io.Reader = &dataReader{r: br}
		if bytewise {
			r = &byteWiseDataReader{r: br}
		}
		for {
			if _, err := r.Read(out); err != nil {
				break
			}
		}
	}
}

// BenchmarkDataReader: block-wise vs upstream's byte-wise loop, 50 KB of
// 80-octet lines (every line dot-stuffed, the worst case for the block
// path).
func BenchmarkDataReader(b *testing.B) {
	b.Run("blocks", func(b *testing.B) { benchmarkDataReader(b, 50<<10, false) })
	b.Run("bytewise", func(b *testing.B) { benchmarkDataReader(b, 50<<10, true) })
}
