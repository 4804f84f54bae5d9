package testutil

import (
	"net"
	"testing"
)

// FreeAddr returns a loopback "127.0.0.1:port" whose port was free a
// moment ago (a listener bound to port 0, then closed), for a server a
// test configures by address. Another process may take it in between;
// tests accept that small race.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
