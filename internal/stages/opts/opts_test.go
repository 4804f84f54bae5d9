package opts

import (
	"strings"
	"testing"
	"time"
)

func TestOpts(t *testing.T) {
	o := New("k", map[string]any{
		"s": "x", "b": true, "n": int64(3), "d": "2s", "l": []any{"a", "b"},
		"t": []any{map[string]any{"x": "1"}},
	})
	var (
		s string
		b bool
		n int
		d time.Duration
		l []string
	)
	o.String("s", &s)
	o.Bool("b", &b)
	o.Int("n", &n, 1, 5)
	o.Duration("d", &d)
	o.Strings("l", &l)
	ts := o.Tables("t")
	if err := o.Err(); err != nil {
		t.Fatal(err)
	}
	if s != "x" || !b || n != 3 || d != 2*time.Second || strings.Join(l, ",") != "a,b" || len(ts) != 1 {
		t.Fatalf("%q %v %d %v %v %d", s, b, n, d, l, len(ts))
	}
	var x string
	ts[0].String("x", &x)
	if ts[0].Err() != nil || x != "1" {
		t.Fatal(x, ts[0].Err())
	}
	for _, c := range []struct {
		m    map[string]any
		read func(*Opts)
		want string
	}{
		{map[string]any{"s": int64(1)}, func(o *Opts) { o.String("s", &s) }, "sluice.builtin.k: s: want a string"},
		{map[string]any{"b": "yes"}, func(o *Opts) { o.Bool("b", &b) }, "b: want true or false"},
		{map[string]any{"n": int64(9)}, func(o *Opts) { o.Int("n", &n, 1, 5) }, "n: want an integer from 1 to 5"},
		{map[string]any{"d": "soon"}, func(o *Opts) { o.Duration("d", &d) }, "d: want a duration"},
		{map[string]any{"l": "a"}, func(o *Opts) { o.Strings("l", &l) }, "l: want a list of strings"},
		{map[string]any{"l": []any{"a", int64(2)}}, func(o *Opts) { o.Strings("l", &l) }, "l: item 2"},
		{map[string]any{"t": []any{"x"}}, func(o *Opts) { o.Tables("t") }, "t: item 1: want a table"},
		{map[string]any{"zz": "1", "aa": "2"}, func(o *Opts) {}, "unknown option aa, zz"},
	} {
		o := New("k", c.m)
		c.read(o)
		if err := o.Err(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.m, err, c.want)
		}
	}
}
