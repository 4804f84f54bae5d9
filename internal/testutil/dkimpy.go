package testutil

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// DKIMPython is the interpreter that sees Debian's python3-dkim (dkimpy),
// the independent verifier the DKIM tests check our signatures with (a
// pyenv or venv python3 on PATH does not see it).
const DKIMPython = "/usr/bin/python3"

// NeedDKIMPy skips the test (or, under SLUICE_TEST_DKIMPY=require, as CI
// sets, fails it) when dkimpy cannot be imported. make deps installs it.
func NeedDKIMPy(t testing.TB) {
	t.Helper()
	out, err := exec.Command(DKIMPython, "-c", "import dkim, nacl").CombinedOutput()
	if err == nil {
		return
	}
	msg := fmt.Sprintf("%s cannot import dkim (%v: %s); install Debian's python3-dkim (make deps does it as root)",
		DKIMPython, err, strings.TrimSpace(string(out)))
	if os.Getenv("SLUICE_TEST_DKIMPY") == "require" {
		t.Fatal("SLUICE_TEST_DKIMPY=require: " + msg)
	}
	t.Skip("SKIPPING the DKIM interop test: " + msg)
}

// dkimpyScript verifies every DKIM-Signature of the message on stdin
// (after a first line of JSON: TXT records by name) and prints one line
// per signature, top first: "pass d=... s=... a=..." or "fail ...".
const dkimpyScript = `
import sys, json, dkim
data = sys.stdin.buffer.read()
nl = data.index(b"\n")
records = json.loads(data[:nl])
msg = data[nl+1:]
def dnsfunc(name, timeout=5):
    n = name.decode() if isinstance(name, bytes) else name
    v = records.get(n.rstrip("."))
    return v.encode() if v is not None else None
d = dkim.DKIM(msg)
n = sum(1 for k, _ in d.headers if k.lower() == b"dkim-signature")
if n == 0:
    print("none")
for i in range(n):
    d = dkim.DKIM(msg)
    try:
        ok = d.verify(idx=i, dnsfunc=dnsfunc)
    except dkim.ValidationError:
        ok = False
    sig = d.signature_fields or {}
    print(("pass" if ok else "fail"), "d=" + sig.get(b"d", b"").decode(), "s=" + sig.get(b"s", b"").decode(), "a=" + sig.get(b"a", b"").decode())
`

// DKIMPyVerify runs dkimpy over msg with the TXT records given by name
// (selector._domainkey.domain → "v=DKIM1; k=...; p=...") and returns one
// line per signature, top first: "pass d=example.com s=s1 a=rsa-sha256"
// or "fail ...", or ["none"] for an unsigned message.
func DKIMPyVerify(t testing.TB, msg []byte, records map[string]string) []string {
	t.Helper()
	js, err := json.Marshal(records)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(DKIMPython, "-c", dkimpyScript)
	cmd.Stdin = bytes.NewReader(append(append(js, '\n'), msg...))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("dkimpy: %v\n%s", err, stderr.String())
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n")
}
