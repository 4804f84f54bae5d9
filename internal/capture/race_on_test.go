//go:build race

package capture

// raceEnabled: the race detector is on (make test); the heaviest tests
// run fewer rounds.
const raceEnabled = true
