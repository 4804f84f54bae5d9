package plugin

// FaultyBin is the path of the test plugin TestMain built, for the
// external tests.
func FaultyBin() string { return faultyBin }
