package capture

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestDeleteSurvivesCrash: a message deleted (one, or a tenant's all)
// stays deleted when the process is killed (SIGKILL) right after the
// delete answered. Deletes were committed without a sync, so a crash
// before the next capture brought them back.
func TestDeleteSurvivesCrash(t *testing.T) {
	if dir := os.Getenv("SLUICE_CAPTURE_CRASH_DIR"); dir != "" {
		// The child: delete, say so, wait to be killed.
		s, err := Open(dir, Options{Logger: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := s.Delete("acme", os.Getenv("SLUICE_CAPTURE_CRASH_ID")); !ok || err != nil {
			t.Fatalf("delete: %v %v", ok, err)
		}
		if n, err := s.DeleteAll("beta"); n != 2 || err != nil {
			t.Fatalf("delete all: %d %v", n, err)
		}
		os.Stdout.WriteString("deleted\n")
		select {}
	}
	dir := t.TempDir()
	s := open(t, dir, Options{})
	var ids []string
	for _, tenant := range []string{"acme", "acme", "beta", "beta"} {
		sm, err := s.Put(tenant, "", "a@s.test", []string{"b@d.test"}, msg("s", "b@d.test", "hello"))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, sm.ID)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	cmd, out := startChild(t, "TestDeleteSurvivesCrash", "SLUICE_CAPTURE_CRASH_DIR="+dir, "SLUICE_CAPTURE_CRASH_ID="+ids[0])
	line, _ := out.ReadString('\n')
	_ = cmd.Process.Kill() // SIGKILL: no Close, no flush
	_ = cmd.Wait()
	if strings.TrimSpace(line) != "deleted" {
		t.Fatalf("child said %q", line)
	}
	s = open(t, dir, Options{})
	defer s.Close()
	if _, ok := s.Get("acme", ids[0]); ok {
		t.Error("the deleted message is back after the crash")
	}
	if _, ok := s.Get("acme", ids[1]); !ok {
		t.Error("the other message is gone")
	}
	if p, _ := s.Search("beta", Filter{}, 0, 10); p.Total != 0 {
		t.Errorf("beta holds %d messages after its delete-all and the crash", p.Total)
	}
	if p, _ := s.Search("acme", Filter{Text: "hello"}, 0, 10); p.Total != 1 {
		t.Errorf("a text search finds %d messages, want 1", p.Total)
	}
}

// startChild runs this test binary's test name in a child process with
// env added, and returns it and its standard output.
func startChild(t *testing.T, name string, env ...string) (*exec.Cmd, *bufio.Reader) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+name+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, bufio.NewReader(out)
}
