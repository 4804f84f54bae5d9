package main

import (
	"fmt"
	"math/rand/v2"
	"net/smtp"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var zeroSubjectRE = regexp.MustCompile(`(?m)^Subject: (wz-\d+-\d+-\d+)\r$`)

// TestCrashZeroAheadUnderLoad: with WAL zero-ahead on (the default) and a
// 4 MiB memtable, so that the WAL rotates many times, 20 SMTP sessions
// send ~24 KB messages while the relay is killed with SIGKILL at random
// points, several times. After each restart the spool must open (Pebble
// reports no WAL corruption), and at the end every message that got its
// 250 after DATA reaches the sink: none lost across the kills.
func TestCrashZeroAheadUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test skipped in -short mode")
	}
	e := newEnv(t, map[string]string{"{{MAXSIZE}}": "256KB"})
	cfg, err := os.ReadFile(e.relay.cfg)
	if err != nil {
		t.Fatal(err)
	}
	spoolLine := regexp.MustCompile(`sluice\.spool \{ path = "([^"]+)" \}`)
	if !spoolLine.Match(cfg) {
		t.Fatal("the base config has no spool line to edit")
	}
	cfg = spoolLine.ReplaceAll(cfg, []byte(`sluice.spool { path = "$1", memtable_mb = 4, wal_zero_ahead = true, min_free = 0 }`))
	if err := os.WriteFile(e.relay.cfg, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	spoolDir := filepath.Join(e.relay.dir, "spool")
	body := strings.Repeat("zero-ahead crash test line, 64 bytes long, padded to the end..\r\n", 380) // ~24 KB

	const sessions, rounds = 20, 5
	var (
		mu       sync.Mutex
		acked    = map[string]bool{}
		sawZeros atomic.Bool // a live WAL ended in zeros: written ahead of Pebble's records
	)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 21))
	for round := range rounds {
		e.relay.start()
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for s := range sessions {
			wg.Add(1)
			go func() {
				defer wg.Done()
				zeroAheadSession(e.relay.smtp, round, s, body, stop, func(subj string) {
					mu.Lock()
					acked[subj] = true
					mu.Unlock()
				})
			}()
		}
		// Let the load run for a random while, watching the WAL files.
		deadline := time.Now().Add(time.Duration(800+rng.IntN(2500)) * time.Millisecond)
		for time.Now().Before(deadline) {
			if walZeroTail(spoolDir) {
				sawZeros.Store(true)
			}
			time.Sleep(50 * time.Millisecond)
		}
		e.relay.kill9()
		close(stop)
		wg.Wait()
		mu.Lock()
		t.Logf("round %d: killed after %d acknowledged in all", round, len(acked))
		mu.Unlock()
		if log := e.relay.logText(); strings.Contains(strings.ToLower(log), "corrupt") {
			t.Fatalf("round %d: the relay logged corruption:\n%s", round, grepLines(log, "orrupt"))
		}
	}
	e.relay.start() // fails the test if the spool cannot open
	if log := e.relay.logText(); strings.Contains(strings.ToLower(log), "corrupt") {
		t.Fatalf("last restart: the relay logged corruption:\n%s", grepLines(log, "orrupt"))
	}
	if len(acked) < sessions*rounds {
		t.Fatalf("only %d messages acknowledged in %d rounds: the load did not run", len(acked), rounds)
	}
	if !sawZeros.Load() {
		t.Fatal("no WAL file ever ended in zeros while the relay ran: zero-ahead was not on")
	}
	seen := map[string]int{}
	deadline := time.Now().Add(2 * time.Minute) // a race-built relay on a loaded machine

	for {
		clear(seen)
		for _, m := range e.smart.messages() {
			if sm := zeroSubjectRE.FindSubmatch(m.Data); sm != nil {
				seen[string(sm[1])]++
			}
		}
		missing := 0
		for subj := range acked {
			if seen[subj] == 0 {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged messages never reached the sink", missing, len(acked))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("zero-ahead crash: %d acknowledged over %d kills, all delivered (%d distinct at the sink)", len(acked), rounds, len(seen))
}

// zeroAheadSession sends messages on one SMTP connection (reconnecting
// when it breaks) until stop is closed, calling ok for each message whose
// DATA got a 250.
func zeroAheadSession(addr string, round, s int, body string, stop <-chan struct{}, ok func(string)) {
	for i := 0; ; {
		select {
		case <-stop:
			return
		default:
		}
		c, err := smtp.Dial(addr)
		if err != nil {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		if c.Hello("client.test") != nil {
			c.Close()
			continue
		}
		for ; ; i++ {
			select {
			case <-stop:
				c.Close()
				return
			default:
			}
			subj := fmt.Sprintf("wz-%d-%d-%d", round, s, i)
			if err := sendOn(c, "app@sender.test", "bob@smart.test", msgData("app@sender.test", "bob@smart.test", subj)+body); err != nil {
				break
			}
			ok(subj)
		}
		c.Close()
		i++
	}
}

// walZeroTail reports whether a WAL file in dir ends in 4 KiB of zeros.
// Pebble's own writes never do (a record's header has a checksum; block
// padding is under 11 bytes, and preallocation keeps the file's size), so
// such a file has zeros written ahead of its records.
func walZeroTail(dir string) bool {
	logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	for _, l := range logs {
		if walTrailingZeros(l) >= 4096 {
			return true
		}
	}
	return false
}

// walTrailingZeros returns how many zero bytes a WAL file ends with: the
// zeros written ahead of its records (wal_zero_ahead), not data. 0 when
// it cannot be read.
func walTrailingZeros(path string) int64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0
	}
	buf := make([]byte, 64<<10)
	var zeros int64
	for end := fi.Size(); end > 0; {
		n := min(int64(len(buf)), end)
		if _, err := f.ReadAt(buf[:n], end-n); err != nil {
			return zeros
		}
		for i := n - 1; i >= 0; i-- {
			if buf[i] != 0 {
				return zeros
			}
			zeros++
		}
		end -= n
	}
	return zeros
}
