package plugin

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	goplugin "github.com/hashicorp/go-plugin"

	stagev1 "github.com/sluice-mta/sluice/plugins/proto/stage/v1"
)

// Process management: how a plugin process is stopped, and what is said
// when it fails to start.
//
// Each plugin runs in its own process group (see setProcAttrs), so that
// stopping it also ends the processes it forked. A relay killed with
// kill -9 cannot signal the group: then only the plugin itself dies (by
// Pdeathsig, on Linux); a plugin that forks must give its children their
// own Pdeathsig, or a wrapper script must exec the real plugin.

const (
	// killGrace bounds a graceful stop (go-plugin's Shutdown call, then
	// the wait for the process to exit): past it the process group is
	// sent SIGKILL. A frozen plugin (SIGSTOPped, or a runtime stuck in a
	// loop that holds its only thread) never answers Shutdown.
	killGrace = 2 * time.Second
	// reapWait bounds the wait, after SIGKILL, for go-plugin to reap the
	// process and drain its output; past it the stop is abandoned (and
	// logged) rather than blocking a restart or the relay's shutdown.
	reapWait = 5 * time.Second
	// stderrTail is how much of a plugin's last stderr output a start
	// failure quotes.
	stderrTail = 2 << 10
)

// stopProcess ends a plugin process and the rest of its process group
// (pid is the group's id; 0 when the process never started). graceful
// first asks the plugin to shut down and waits up to killGrace for it;
// otherwise (a plugin judged crashed or hung) the group is killed at once.
// It returns within killGrace+reapWait whatever the plugin does.
func stopProcess(log *slog.Logger, c *goplugin.Client, pid int, graceful bool) {
	var once sync.Once
	kill := func() { once.Do(func() { killGroup(pid) }) }
	if !graceful {
		kill()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Kill()
	}()
	grace := time.NewTimer(killGrace)
	defer grace.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-done:
			kill() // what the plugin forked goes with it
			return
		case <-tick.C:
			// The plugin has exited but go-plugin may still be reading
			// its output, which its children hold open: end them.
			if c.Exited() {
				kill()
			}
			continue
		case <-grace.C:
			log.Warn("plugin did not stop within the grace period; killing its process group", "pid", pid, "grace", killGrace)
			kill()
		}
		break
	}
	select {
	case <-done:
	case <-time.After(reapWait):
		log.Error("plugin process not reaped after SIGKILL; giving up on it (a child left its process group and holds its output open?)",
			"pid", pid, "waited", reapWait)
	}
}

// stopInstance ends inst; see stopProcess.
func (g *group) stopInstance(inst *instance, graceful bool) {
	if inst.unwatch != nil {
		inst.unwatch()
	}
	if inst.mux != nil { // the Calls stream first: its calls get on_error now
		inst.mux.close()
	}
	stopProcess(g.log, inst.client, inst.pid, graceful)
	removeSocketDir(inst.sockDir)
}

// socketDir gives the plugin process a directory of its own for its gRPC
// Unix socket (go-plugin's PLUGIN_UNIX_SOCKET_DIR; without it the plugin
// creates the socket in the system temp directory and only removes it on
// a clean exit, so every killed or crashed plugin left one behind).
// stopInstance removes the directory. An operator's own
// PLUGIN_UNIX_SOCKET_DIR in env = {...} is kept and returns "".
func socketDir(cmd *exec.Cmd) (string, error) {
	for _, kv := range cmd.Env {
		if strings.HasPrefix(kv, goplugin.EnvUnixSocketDir+"=") {
			return "", nil
		}
	}
	dir, err := os.MkdirTemp("", "sluice-plugin-")
	if err != nil {
		return "", fmt.Errorf("a directory for the plugin's socket: %w (is TMPDIR writable?)", err)
	}
	cmd.Env = append(cmd.Env, goplugin.EnvUnixSocketDir+"="+dir)
	return dir, nil
}

// removeSocketDir removes a directory made by socketDir ("" is none).
func removeSocketDir(dir string) {
	if dir != "" {
		os.RemoveAll(dir)
	}
}

// tailBuffer keeps the last stderrTail bytes written to it. Safe for
// concurrent use.
type tailBuffer struct {
	mu        sync.Mutex
	buf       []byte
	dropSched bool // String leaves out the runtime's scheduler trace (see sysmonAwake)
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - stderrTail; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

// String returns the kept output, trimmed, with a marker when older
// output was dropped.
func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := strings.TrimSpace(string(t.buf))
	cut := len(t.buf) >= stderrTail
	if cut {
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			s = s[i+1:] // drop the partial first line
		}
	}
	if t.dropSched {
		// A cut tail may begin inside a trace whose SCHED line was cut off.
		s = dropSchedTrace(s, cut)
	}
	if cut {
		s = "...\n" + s
	}
	return s
}

// startError turns go-plugin's start failure into Sluice's words, adds
// how the process ended (once stopped) and the plugin's last stderr lines.
func startError(err error, cmd *exec.Cmd, stderr *tailBuffer, startTimeout time.Duration) error {
	exited := ""
	if ps := cmd.ProcessState; ps != nil && ps.Exited() {
		exited = fmt.Sprintf(" (exit status %d)", ps.ExitCode())
	}
	msg := err.Error()
	switch {
	case strings.HasPrefix(msg, "Unrecognized remote plugin message: "):
		line, _, _ := strings.Cut(strings.TrimPrefix(msg, "Unrecognized remote plugin message: "), "\n")
		if line == "" {
			err = fmt.Errorf("the plugin exited or closed its stdout%s before completing its handshake", exited)
		} else {
			err = fmt.Errorf("the plugin printed %q on stdout instead of its handshake: a plugin must print nothing on stdout before it serves", line)
		}
	case strings.Contains(msg, "plugin exited before we could connect"):
		err = fmt.Errorf("the plugin exited%s before completing its handshake", exited)
	case strings.Contains(msg, "timeout while waiting for plugin to start"):
		err = fmt.Errorf("the plugin did not complete its handshake within %v (start timeout): is it a Sluice plugin (sdk.Serve)?", startTimeout)
	}
	if tail := stderr.String(); tail != "" {
		return fmt.Errorf("%w; its last stderr output:\n%s", err, tail)
	}
	if exited != "" {
		return fmt.Errorf("%w; it wrote nothing on stderr: is it a Sluice plugin (built with plugins/sdk, or following docs/plugins.md)?", err)
	}
	return err
}

// probeTimeout bounds the health check that tells a broken connection
// from a plugin that returned UNAVAILABLE itself.
const probeTimeout = time.Second

// probe checks, in the background, whether inst still answers after a
// call failed with UNAVAILABLE, and restarts it when it does not (or has
// exited meanwhile). One probe per slot runs at a time.
func (sl *slot) probe(inst *instance) {
	if !sl.probing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer sl.probing.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
		defer cancel()
		_, err := inst.rpc.Health(ctx, &stagev1.HealthRequest{})
		switch {
		case inst.client.Exited():
			sl.restart(inst, "plugin exited")
		case err != nil:
			sl.restart(inst, "plugin connection broken: "+statusErr(err).Error())
		}
	}()
}
