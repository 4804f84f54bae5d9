package logx

import (
	"testing"
	"time"
)

func TestSampler(t *testing.T) {
	now := time.Unix(0, 0)
	s := NewSampler(10 * time.Second)
	s.now = func() time.Time { return now }
	if ok, n := s.Allow("a"); !ok || n != 0 {
		t.Fatalf("first line: %v %d", ok, n)
	}
	for i := 0; i < 5; i++ {
		if ok, _ := s.Allow("a"); ok {
			t.Fatal("a repeat within the interval passed")
		}
	}
	if ok, _ := s.Allow("b"); !ok {
		t.Fatal("another key was held back")
	}
	now = now.Add(10 * time.Second)
	if ok, n := s.Allow("a"); !ok || n != 5 {
		t.Fatalf("after the interval: %v, suppressed %d; want true, 5", ok, n)
	}
	if ok, n := s.Allow("a"); ok || n != 0 {
		t.Fatalf("right after: %v %d", ok, n)
	}
}
