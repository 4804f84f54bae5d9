package sdk

import "testing"

func TestWithoutSluiceSchedtrace(t *testing.T) {
	for _, tt := range []struct {
		in, want string
		changed  bool
	}{
		{"schedtrace=2147483647", "", true},
		{"madvdontneed=1,schedtrace=2147483647", "madvdontneed=1", true},
		{"schedtrace=0", "schedtrace=0", false},
		{"schedtrace=1000,gctrace=1", "schedtrace=1000,gctrace=1", false},
		{"", "", false},
	} {
		if got, changed := withoutSluiceSchedtrace(tt.in); got != tt.want || changed != tt.changed {
			t.Errorf("%q: got %q %v, want %q %v", tt.in, got, changed, tt.want, tt.changed)
		}
	}
}
