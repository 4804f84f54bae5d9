package plugin

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestWithSysmonAwake(t *testing.T) {
	for _, tt := range []struct {
		name string
		env  []string
		want []string
		add  bool
	}{
		{"none", []string{"A=1"}, []string{"A=1", "GODEBUG=" + sysmonAwake}, true},
		{"other settings", []string{"GODEBUG=madvdontneed=1", "B=2"}, []string{"B=2", "GODEBUG=madvdontneed=1," + sysmonAwake}, true},
		{"set by the operator", []string{"GODEBUG=gctrace=1,schedtrace=0"}, []string{"GODEBUG=gctrace=1,schedtrace=0"}, false},
		{"the last wins, as in os/exec", []string{"GODEBUG=schedtrace=1000", "GODEBUG=x=1"}, []string{"GODEBUG=schedtrace=1000", "GODEBUG=x=1," + sysmonAwake}, true},
		{"the last sets it", []string{"GODEBUG=x=1", "GODEBUG=schedtrace=0"}, []string{"GODEBUG=x=1", "GODEBUG=schedtrace=0"}, false},
		{"empty", []string{"GODEBUG="}, []string{"GODEBUG=" + sysmonAwake}, true},
		// The operator's env gives Sluice's own value (as the former docs
		// advised): the same trace lines, left out of the log too.
		{"set to Sluice's value", []string{"GODEBUG=gctrace=1," + sysmonAwake}, []string{"GODEBUG=gctrace=1," + sysmonAwake}, true},
		{"the runtime takes the last schedtrace", []string{"GODEBUG=" + sysmonAwake + ",schedtrace=0"}, []string{"GODEBUG=" + sysmonAwake + ",schedtrace=0"}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			in := slices.Clone(tt.env)
			if got, add := withSysmonAwake(in); !slices.Equal(got, tt.want) || add != tt.add {
				t.Errorf("got %q %v, want %q %v", got, add, tt.want, tt.add)
			}
			if !slices.Equal(in, tt.env) {
				t.Errorf("the input was changed: %q", in)
			}
		})
	}
}

// crashWithSchedTrace is what a Go program run with GODEBUG=schedtrace
// prints on stderr when it panics (go1.26, `GODEBUG=schedtrace=2147483647
// ./crash`), with a line of its own before and after.
const crashWithSchedTrace = `starting up
SCHED 0ms: gomaxprocs=2 idleprocs=0 threads=6 spinningthreads=0 needspinning=1 idlethreads=1 runqueue=0 gcwaiting=false nmidlelocked=0 stopwait=0 sysmonwait=false
  P0: status=0 schedtick=0 syscalltick=0 m=nil runqsize=0 gfreecnt=0 timerslen=0
  P1: status=1 schedtick=5 syscalltick=0 m=0 runqsize=1 gfreecnt=0 timerslen=0
  M1: p=nil curg=nil mallocing=0 throwing=0 preemptoff= locks=2 dying=0 spinning=false blocked=false lockedg=nil
  M0: p=1 curg=1 mallocing=1 throwing=0 preemptoff= locks=2 dying=1 spinning=false blocked=false lockedg=nil
  G1: status=2(chan receive) m=0 lockedm=nil
  G17: status=4(force gc (idle)) m=nil lockedm=nil
panic: boom

goroutine 1 [running]:
main.main()
	/tmp/crash/main.go:5 +0x2d
  G2: not after a SCHED line, kept
SCHED 86400000ms: gomaxprocs=1 idleprocs=1 threads=5 spinningthreads=0 needspinning=0 idlethreads=2 runqueue=0 [ 0 ] schedticks=[ 12 ]
SCHED without a time, kept
`

// TestLogDropsSchedTrace: the runtime's scheduler trace does not reach the
// relay's log (nor use up its rate limit) when Sluice set schedtrace;
// everything else does, the panic's own trace included.
func TestLogDropsSchedTrace(t *testing.T) {
	var out bytes.Buffer
	w := &lineLogger{log: slog.New(slog.NewTextHandler(&out, nil)), stream: "stderr", sched: schedFilter{on: true}}
	// Written in pieces that split lines, as a pipe delivers them.
	for s := crashWithSchedTrace; s != ""; {
		n := min(len(s), 37)
		if _, err := w.Write([]byte(s[:n])); err != nil {
			t.Fatal(err)
		}
		s = s[n:]
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		_, v, _ := strings.Cut(l, "line=")
		got = append(got, v)
	}
	want := []string{`"starting up"`, `"panic: boom"`, `"goroutine 1 [running]:"`, `main.main()`,
		`"\t/tmp/crash/main.go:5 +0x2d"`, `"  G2: not after a SCHED line, kept"`, `"SCHED without a time, kept"`}
	if !slices.Equal(got, want) {
		t.Errorf("logged lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := (&tailBuffer{buf: []byte(crashWithSchedTrace)}).String(); !strings.Contains(got, "gomaxprocs=") {
		t.Errorf("trace dropped from the stderr tail of a plugin whose env set schedtrace:\n%s", got)
	}
	if tb := (&tailBuffer{buf: []byte(crashWithSchedTrace), dropSched: true}).String(); strings.Contains(tb, "gomaxprocs=") || strings.Contains(tb, "G17:") ||
		!strings.Contains(tb, "panic: boom") || !strings.Contains(tb, "G2: not after") {
		t.Errorf("start error's stderr tail:\n%s", tb)
	}
}

// TestPluginEnvKeepsSysmonAwake: a plugin process gets GODEBUG's
// schedtrace from Sluice, after the stage's other GODEBUG settings, and
// not when the stage's env sets schedtrace itself.
func TestPluginEnvKeepsSysmonAwake(t *testing.T) {
	for _, tt := range []struct {
		env  []string
		want string
	}{
		{nil, "GODEBUG=" + sysmonAwake},
		{[]string{"GODEBUG=madvdontneed=1"}, "GODEBUG=madvdontneed=1," + sysmonAwake},
		{[]string{"GODEBUG=schedtrace=0"}, "GODEBUG=schedtrace=0"},
	} {
		s, _ := start(t, "ok", Options{Env: tt.env})
		if _, err := s.OnMessage(context.Background(), message(t, "x")); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile("/proc/" + strconv.Itoa(s.PID()) + "/environ")
		if err != nil {
			t.Skipf("no /proc: %v", err)
		}
		var got []string
		for _, kv := range strings.Split(string(data), "\x00") {
			if strings.HasPrefix(kv, "GODEBUG=") {
				got = append(got, kv)
			}
		}
		if len(got) != 1 || got[0] != tt.want {
			t.Errorf("env %q: the plugin's GODEBUG %q, want %q", tt.env, got, tt.want)
		}
		s.Close()
	}
}
