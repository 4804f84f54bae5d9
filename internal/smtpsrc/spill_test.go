package smtpsrc

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/pipeline"
)

// TestReceiveDataSpill: past spillAt the message goes to a temporary file
// and comes back whole; the budget holds at most about spillAt while it
// arrives and exactly the message's size at the end; no file is left in
// the directory; the size limit and the budget still apply.
func TestReceiveDataSpill(t *testing.T) {
	dir := t.TempDir()
	const spillAt = 64 << 10
	msg := strings.Repeat(strings.Repeat("z", 998)+"\r\n", 300) // 300 KB
	b := &budget{}
	peak := &peakReader{r: strings.NewReader(msg), b: b}
	data, charged, err := receiveData(getBuf(), peak, 0, 0, b, spillAt, dir)
	if err != nil || string(data) != msg {
		t.Fatalf("spilled message: err %v, %d bytes, equal %v", err, len(data), string(data) == msg)
	}
	if charged != int64(len(msg)) || b.inUse() != charged {
		t.Errorf("charged %d (in use %d), want the message's size %d", charged, b.inUse(), len(msg))
	}
	if peak.max > spillAt+minBuf {
		t.Errorf("the budget held %d bytes while the message arrived, want at most about %d", peak.max, spillAt)
	}
	b.release(charged)
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("files left in the spill directory: %v", left)
	}

	// Under the threshold: in memory, as readData.
	small := msg[:10<<10]
	data, charged, err = receiveData(getBuf(), strings.NewReader(small), 0, 0, b, spillAt, dir)
	if err != nil || string(data) != small || charged != int64(cap(data)) {
		t.Errorf("small message: err %v, equal %v, charged %d for cap %d", err, string(data) == small, charged, cap(data))
	}
	b.release(charged)
	putBuf(data)

	// The size limit counts the spilled part too.
	_, charged, err = receiveData(getBuf(), strings.NewReader(msg), int64(len(msg)-1), 0, b, spillAt, dir)
	if !errors.Is(err, pipeline.ErrTooBig) {
		t.Errorf("over the limit: %v", err)
	}
	b.release(charged)

	// The whole message must fit in the budget once it is read back.
	tight := &budget{limit: 200 << 10}
	_, charged, err = receiveData(getBuf(), strings.NewReader(msg), 0, 0, tight, spillAt, dir)
	if !errors.Is(err, errOverBudget) {
		t.Errorf("300 KB in a 200 KB budget: %v", err)
	}
	tight.release(charged)
	if b.inUse() != 0 || tight.inUse() != 0 {
		t.Errorf("budgets hold %d and %d at the end", b.inUse(), tight.inUse())
	}

	// A directory that cannot take the file: errSpill.
	_, charged, err = receiveData(getBuf(), strings.NewReader(msg), 0, 0, b, spillAt, filepath.Join(dir, "missing"))
	if !errors.Is(err, errSpill) {
		t.Errorf("spill into a missing directory: %v", err)
	}
	b.release(charged)
}

// peakReader records the most its budget held during the reads.
type peakReader struct {
	r   *strings.Reader
	b   *budget
	max int64
}

func (p *peakReader) Read(b []byte) (int, error) {
	if n := p.b.inUse(); n > p.max {
		p.max = n
	}
	return p.r.Read(b)
}

// TestSpillEndToEnd: a message larger than spill_threshold, over SMTP,
// reaches the store byte for byte; a spill directory that does not exist
// gets 452 4.3.1 after the end of data, and the session goes on.
func TestSpillEndToEnd(t *testing.T) {
	l := testListener()
	l.SpillThreshold = 32 << 10
	sub := &fakeSub{}
	ts := startServer(t, l, newChain(t, pipeline.ChainOptions{}), sub, WithSpillDir(t.TempDir()))
	c := dialReady(t, ts.addr)
	c.ehlo()
	// 200 KB, every line dot-stuffed on the wire.
	data := "From: a@local.test\r\nSubject: big\r\n\r\n" + strings.Repeat(".a line that starts with a dot, 40 octets\r\n", 5000)
	wire := strings.ReplaceAll(data, "\n.", "\n..")
	if r := c.sendMessage("a@local.test", []string{"bob@local.test"}, wire); r.Code != 250 {
		t.Fatalf("reply %v", r)
	}
	msgs := sub.messages()
	if len(msgs) != 1 || !strings.HasSuffix(string(msgs[0].Data), data) {
		t.Fatalf("stored %d messages; the data does not end with what was sent", len(msgs))
	}

	ts2 := startServer(t, l, newChain(t, pipeline.ChainOptions{}), &fakeSub{}, WithSpillDir(filepath.Join(t.TempDir(), "missing")))
	c2 := dialReady(t, ts2.addr)
	c2.ehlo()
	if r := c2.sendMessage("a@local.test", []string{"bob@local.test"}, wire); r.Code != 452 || !strings.HasPrefix(r.Text(), "4.3.1") {
		t.Fatalf("spill failure: reply %v, want 452 4.3.1", r)
	}
	if r := c2.sendMessage("a@local.test", []string{"bob@local.test"}, "Subject: small\r\n\r\nhi\r\n"); r.Code != 250 {
		t.Fatalf("small message after a spill failure: %v", r)
	}
}
