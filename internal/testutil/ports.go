package testutil

import (
	"math/rand/v2"
	"net"
	"strconv"
	"testing"
)

// Ports FreeAddr picks from: below Linux's default ephemeral range
// (32768–60999), so no outgoing connection of any process and no listener
// on port 0 can be given the port between FreeAddr and the test's bind.
const (
	freePortLow  = 20000
	freePortHigh = 32767
)

// FreeAddr returns a loopback "127.0.0.1:port" whose port was free a
// moment ago, for a server a test configures by address. The port is drawn
// at random below the ephemeral range (see freePortLow), so the only race
// left is with another test's FreeAddr drawing the same port (about 1 in
// 12,768 per pair); it falls back to a port-0 listener's port when none of
// 50 draws is free.
func FreeAddr(t testing.TB) string {
	t.Helper()
	for range 50 {
		addr := "127.0.0.1:" + strconv.Itoa(freePortLow+rand.IntN(freePortHigh-freePortLow+1))
		if ln, err := net.Listen("tcp", addr); err == nil {
			ln.Close()
			return addr
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
