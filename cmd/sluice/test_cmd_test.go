package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
)

// dryRunDir copies testdata/dryrun into a temporary directory and builds
// the stamp test plugin beside its pipeline.lua; it returns the directory.
func dryRunDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "a", "b", "c", "d")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"pipeline.lua", "message.eml", "crash.eml", "later.eml"} {
		b, err := os.ReadFile(filepath.Join("testdata", "dryrun", f))
		if err != nil {
			t.Fatal(err)
		}
		src := string(b)
		if f == "pipeline.lua" {
			// The scripts live in the repository, not under the temp dir.
			abs, _ := filepath.Abs("../../scripts")
			src = strings.ReplaceAll(src, "../../../../scripts", abs)
		}
		if err := os.WriteFile(filepath.Join(dir, f), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	stampOnce.Do(func() {
		stampBin = filepath.Join(filepath.Dir(binPath), "stamp")
		stampOut, stampErr = exec.Command("go", "build", "-o", stampBin, "../../internal/plugin/testdata/stamp").CombinedOutput()
	})
	if stampErr != nil {
		t.Fatalf("building the stamp plugin: %v\n%s", stampErr, stampOut)
	}
	if err := os.Symlink(stampBin, filepath.Join(dir, "stamp")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// The stamp test plugin, built once beside the sluice binary.
var (
	stampOnce sync.Once
	stampBin  string
	stampOut  []byte
	stampErr  error
)

// runIn runs the binary in dir.
func runIn(t *testing.T, dir string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(binPath, args...)
	cmd.Dir = dir
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

// rfc5322Date is the date of the Received field, which varies per run.
var rfc5322Date = regexp.MustCompile(`; [A-Z][a-z]{2}, \d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d [+-]\d{4}`)

// retryIn is the ratelimit built-in's wait, which depends on the time
// that passed between the recipients (whole seconds, rounded up: stable
// unless a run takes a second).
var retryIn = regexp.MustCompile(`try again in \d+ s`)

// checkGolden compares got with testdata/dryrun/NAME (-update rewrites it).
func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	got = rfc5322Date.ReplaceAllString(got, "; DATE")
	got = retryIn.ReplaceAllString(got, "try again in N s")
	path := filepath.Join("testdata", "dryrun", name)
	if *updateGolden {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (run with -update after checking the change):\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

// TestDryRunTraceGolden runs `sluice test` over a configuration with a
// built-in stage (ratelimit), a Lua script stage, an inline Lua stage and
// a plugin stage, and compares
// the traces with golden files: a message from a file with three
// recipients (one refused at RCPT, one relayed to a partner, one local);
// a sender refused at MAIL; relay denied and a relay network; a refusal
// over HTTP; a script error (the trace names it, the client gets a generic
// 451); a tempfail at on_message; the built-in refusing a third recipient
// at one domain; and --json.
func TestDryRunTraceGolden(t *testing.T) {
	dir := dryRunDir(t)
	cases := []struct {
		golden string
		args   []string
	}{
		{"message.txt", []string{"message.eml"}},
		{"blocked_sender.txt", []string{"--from", "x@spam.example", "--to", "bob@example.test"}},
		{"not_relayed.txt", []string{"--from", "a@ok.example", "--to", "x@elsewhere.example", "--ip", "192.0.2.7"}},
		{"relay_network.txt", []string{"--from", "a@ok.example", "--to", "x@eu.example.net", "--ip", "10.1.2.3", "--helo", "app.internal"}},
		{"http.txt", []string{"--source", "http", "--auth", "key-1", "--from", "a@ok.example", "--to", "blocked@example.test"}},
		{"message.json", []string{"--json", "message.eml"}},
		{"stage_error.txt", []string{"crash.eml"}},
		{"tempfail.txt", []string{"later.eml"}},
		{"rate_limited.txt", []string{"--from", "a@ok.example", "--to", "a@example.test,b@example.test,c@example.test"}},
	}
	for _, c := range cases {
		t.Run(c.golden, func(t *testing.T) {
			out, errOut, code := runIn(t, dir, append([]string{"test", "-c", "pipeline.lua"}, c.args...)...)
			if code != 0 {
				t.Fatalf("exit %d\n%s%s", code, out, errOut)
			}
			checkGolden(t, c.golden, out)
		})
	}
}

// TestDryRunJSON: --json is one JSON document whose fields say what the
// text says: the stages that ran, the stamp plugin's edit, the route of
// each recipient and the reply.
func TestDryRunJSON(t *testing.T) {
	dir := dryRunDir(t)
	out, errOut, code := runIn(t, dir, "test", "-c", "pipeline.lua", "--json", "message.eml")
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, errOut)
	}
	var tr struct {
		Calls []struct {
			Stage, Hook, Recipient, Verdict string
			Edits                           *struct {
				Headers []struct{ Op, Name, Value string }
			}
		}
		Recipients []struct {
			Address, Status, Queue string
			Route                  *struct{ Kind, Host string }
		}
		Reply struct {
			Code int
			Text string
		}
	}
	if err := json.Unmarshal([]byte(out), &tr); err != nil {
		t.Fatalf("--json output does not parse: %v\n%s", err, out)
	}
	stamped := false
	for _, c := range tr.Calls {
		if c.Stage == "stamp" && c.Hook == "on_message" && c.Edits != nil && len(c.Edits.Headers) == 1 && c.Edits.Headers[0].Value == "checked" {
			stamped = true
		}
	}
	if !stamped {
		t.Errorf("no on_message call of the stamp plugin adding X-Stamp: %+v", tr.Calls)
	}
	routes := map[string]string{}
	for _, r := range tr.Recipients {
		routes[r.Address] = r.Status + " " + r.Queue
	}
	want := map[string]string{
		"bob@example.test":      "queued example.test",
		"carol@partner.example": "queued relay:smtp.partner.example:587",
		"blocked@example.test":  "rejected ",
	}
	for a, w := range want {
		if routes[a] != w {
			t.Errorf("%s: %q, want %q", a, routes[a], w)
		}
	}
	if tr.Reply.Code != 250 || !strings.HasPrefix(tr.Reply.Text, "OK: queued as ") {
		t.Errorf("reply %+v", tr.Reply)
	}
}

// TestDryRunRouteQuery: --route names the route a script chooses, and for
// an MX route the MX hosts the resolver (a DNS server on loopback) gives.
func TestDryRunRouteQuery(t *testing.T) {
	dir := dryRunDir(t)
	dns := dnstest.NewServer(t)
	dns.AddMX("elsewhere.example", 20, "mx2.elsewhere.example")
	dns.AddMX("elsewhere.example", 10, "mx1.elsewhere.example")
	out, errOut, code := runIn(t, dir, "test", "-c", "pipeline.lua", "--route", "someone@eu.example.net")
	if code != 0 || !strings.Contains(out, "someone@eu.example.net  queued  route relay 10.0.0.25:25 tls=opportunistic, queue relay:10.0.0.25:25") {
		t.Errorf("route of eu.example.net: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = runIn(t, dir, "test", "-c", "pipeline.lua", "--resolver", dns.Addr(), "--json", "--route", "x@elsewhere.example")
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, errOut)
	}
	var tr struct {
		Recipients []struct {
			Route struct{ Kind string }
			Queue string
			MX    []struct {
				Host string
				Pref int
			}
		}
	}
	if err := json.Unmarshal([]byte(out), &tr); err != nil || len(tr.Recipients) != 1 {
		t.Fatalf("%v\n%s", err, out)
	}
	r := tr.Recipients[0]
	if r.Route.Kind != "mx" || r.Queue != "elsewhere.example" || len(r.MX) != 2 || r.MX[0].Host != "mx1.elsewhere.example" || r.MX[1].Pref != 20 {
		t.Errorf("route query of elsewhere.example: %+v", r)
	}
	checkGolden(t, "route_mx.json", out)
}
