package config

import (
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		err  bool
	}{
		{"30s", 30 * time.Second, false},
		{"5m", 5 * time.Minute, false},
		{"1h30m", 90 * time.Minute, false},
		{"100ms", 100 * time.Millisecond, false},
		{"5d", 120 * time.Hour, false},
		{"1d12h", 36 * time.Hour, false},
		{"0.5d", 12 * time.Hour, false},
		{" 2d ", 48 * time.Hour, false},
		{"0s", 0, false},
		{"", 0, true},
		{"5", 0, true},
		{"5x", 0, true},
		{"d", 0, true},
		{"-5m", 0, true},
		{"-1d", 0, true},
		{"1e3d", 0, true},
		{"5d5d", 0, true},
		{"1d-1h", 0, true},
		{"999999999999d", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseDuration(tt.in)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v, err=%v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		err  bool
	}{
		{"0", 0, false},
		{"1048576", 1 << 20, false},
		{"100B", 100, false},
		{"50KiB", 50 << 10, false},
		{"50kib", 50 << 10, false},
		{"25MB", 25_000_000, false},
		{"25 MB", 25_000_000, false},
		{"25MiB", 25 << 20, false},
		{"1GiB", 1 << 30, false},
		{"2GB", 2_000_000_000, false},
		{"1TiB", 1 << 40, false},
		{"1.5MiB", 3 << 19, false},
		{"1.5", 1, false},
		{"", 0, true},
		{"MB", 0, true},
		{"5XB", 0, true},
		{"-1MB", 0, true},
		{"1e6", 0, true},
		{"0x10", 0, true},
		{"1_000", 0, true},
		{"NaN", 0, true},
		{"9999999TiB", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("ParseSize(%q) = %v, %v; want %v, err=%v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]struct {
		n int
		w time.Duration
	}{"60/minute": {60, time.Minute}, "5/s": {5, time.Second}, " 100 / hour ": {100, time.Hour}, "30/10s": {30, 10 * time.Second}} {
		n, w, err := ParseRate(in)
		if err != nil || n != want.n || w != want.w {
			t.Errorf("ParseRate(%q) = %d, %v, %v", in, n, w, err)
		}
	}
	for _, in := range []string{"60", "0/minute", "-1/s", "x/minute", "5/fortnight", "5/0s"} {
		if _, _, err := ParseRate(in); err == nil {
			t.Errorf("ParseRate(%q): no error", in)
		}
	}
}
