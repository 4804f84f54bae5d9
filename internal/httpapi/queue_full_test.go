package httpapi

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/sluice-mta/sluice/internal/queue"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// fillingFS is the OS's filesystem whose free space (GetDiskUsage) drops
// to 1000 bytes, below any write floor, once armed and the spool's
// write-ahead log has taken fillAfter more bytes: the disk fills up
// while an action writes.
type fillingFS struct {
	vfs.FS
	wal       *atomic.Int64 // bytes written to *.log files
	armedAt   *atomic.Int64 // wal when armed; -1: not armed
	fillAfter int64
	full      *atomic.Bool // set: the disk is full whatever the log
}

func (f fillingFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	file, err := f.FS.Create(name, c)
	if err != nil || !strings.HasSuffix(name, ".log") {
		return file, err
	}
	return countingFile{file, f.wal}, nil
}

// GetDiskUsage reports 1 GiB free (whatever the test machine's disk
// has), or 1000 bytes once full.
func (f fillingFS) GetDiskUsage(string) (vfs.DiskUsage, error) {
	avail := uint64(1 << 30)
	if a := f.armedAt.Load(); f.full.Load() || a >= 0 && f.wal.Load()-a >= f.fillAfter {
		f.full.Store(true)
		avail = 1000
	}
	return vfs.DiskUsage{AvailBytes: avail, TotalBytes: 1 << 40, UsedBytes: 1<<40 - avail}, nil
}

type countingFile struct {
	vfs.File
	n *atomic.Int64
}

func (c countingFile) Write(p []byte) (int, error) {
	n, err := c.File.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// TestHoldOverHTTPStopsWhenTheDiskFills: the spool's disk fills up
// while a hold of 22,000 recipients (22 messages of 1,000, so steps of
// 10,000) writes its first step. The API answers 503 with what was held
// and at most what is left; the queue counts, a restart and the spool
// agree with that answer; once there is room the same request holds
// the rest.
func TestHoldOverHTTPStopsWhenTheDiskFills(t *testing.T) {
	var wal, armedAt atomic.Int64
	var full atomic.Bool
	armedAt.Store(-1)
	fs := fillingFS{FS: vfs.Default, wal: &wal, armedAt: &armedAt, fillAfter: 256 << 10, full: &full}
	e := newEnv(t, envOptions{quiet: true, spoolFS: fs, minFree: 1 << 20})
	e.srv.UseQueue(e.q)
	const name, msgs, per = "full.test", 22, 1000
	const total = msgs * per
	if r := e.do(http.MethodPost, "/v1/queues/"+name+"/pause", e.adminKey, nil); r.Status != http.StatusOK {
		t.Fatalf("pause: %d %s", r.Status, r.Body)
	}
	for i := range msgs {
		m := &spool.Meta{ID: e.sp.NewID(), Sender: "a@example.com", Source: "api", Received: time.Now(), Size: 4}
		b := e.sp.NewBatch()
		_ = b.PutMessage(m, []byte("data"))
		rs := make([]*spool.Recipient, per)
		for j := range rs {
			rs[j] = &spool.Recipient{MsgID: m.ID, Idx: j, Address: fmt.Sprintf("r%d.%d@%s", i, j, name), Domain: name, Route: pipeline.MX()}
			_ = b.PutRecipient(rs[j])
		}
		if err := b.Commit(true); err != nil {
			t.Fatal(err)
		}
		e.q.Enqueue(m, rs)
	}
	if qi, _ := e.queueInfo(name); qi.Ready != total {
		t.Fatalf("queued: %+v", qi)
	}

	armedAt.Store(wal.Load())
	r := e.do(http.MethodPost, "/v1/queues/"+name+"/hold", e.adminKey, nil)
	if r.Status != http.StatusServiceUnavailable || r.Header.Get("Retry-After") == "" {
		t.Fatalf("hold on a filling disk: %d %s", r.Status, r.Body)
	}
	ae := r.errorOf(t)
	mm := regexp.MustCompile(`^(\d+) recipients held, then the spool could not record the rest \(at most (\d+) more recipients, as they were\): run it again to hold the rest(; the spool refused this hold.s event too, so the relay.s log line is its only record)?$`).
		FindStringSubmatch(ae.Message)
	if ae.Code != codeUnavailable || mm == nil {
		t.Fatalf("answer %s", r.Body)
	}
	done, _ := strconv.Atoi(mm[1])
	left, _ := strconv.Atoi(mm[2])
	t.Logf("stopped after %d, at most %d left", done, left)
	if done <= 0 || done%10_000 != 0 || done+left != total {
		t.Fatalf("held %d, left %d of %d: want whole steps of 10000, adding up", done, left, total)
	}
	if qi, _ := e.queueInfo(name); qi.Held != done || qi.Ready != left {
		t.Fatalf("queue after the stopped hold: %+v, want %d held, %d ready", qi, done, left)
	}
	// The spool agrees: a queue loaded from it (a restart) holds as many.
	q2 := queue.New(e.sp, nil, queue.Options{Logger: slog.New(slog.DiscardHandler)})
	if _, err := q2.Load(); err != nil {
		t.Fatal(err)
	}
	infos := q2.Queues()
	q2.Stop(context.Background())
	if len(infos) != 1 || infos[0].Held != done || infos[0].Ready+infos[0].Waiting != left {
		t.Fatalf("loaded from the spool: %+v, want %d held, %d not", infos, done, left)
	}

	// Room again: the same request holds the rest.
	armedAt.Store(-1)
	full.Store(false)
	r = e.do(http.MethodPost, "/v1/queues/"+name+"/hold", e.adminKey, nil)
	var a QueueAction
	r.json(t, &a)
	if r.Status != http.StatusOK || a.Recipients == nil || *a.Recipients != left {
		t.Fatalf("hold again: %d %s, want %d", r.Status, r.Body, left)
	}
	if qi, _ := e.queueInfo(name); qi.Held != total {
		t.Fatalf("queue after the second hold: %+v", qi)
	}
}
