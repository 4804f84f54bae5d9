//go:build !unix

package apikey

// lockFile is a no-op where flock(2) does not exist: concurrent writers in
// separate processes may then lose an update (never corrupt the file,
// which is replaced atomically).
func lockFile(path string) (unlock func(), err error) { return func() {}, nil }
