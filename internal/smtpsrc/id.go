package smtpsrc

import "github.com/oklog/ulid/v2"

// NewID returns a new ULID string: 26 characters, lexically sortable by
// creation time and monotonic within this process (ids made in the same
// millisecond still sort in creation order). It is safe for concurrent use.
//
// It is the default generator for connection and message ids when none is
// given with WithIDGenerator (the server passes the spool's, so every
// source shares one generator).
func NewID() string {
	// ulid.Make draws from a process-wide, mutex-protected monotonic entropy
	// source; it cannot fail in practice (80 bits of increment headroom).
	return ulid.Make().String()
}
