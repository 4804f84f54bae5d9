package bounce

import (
	"regexp"
	"strings"
	"testing"
)

// BenchmarkClassify classifies the replies of the test table in turn
// (a mix of providers, most matched by a text rule, some by a code rule),
// a long 5xx no rule matches (the worst case: every rule is tried), and
// the same without the literal prefilter, and compares with one pass of
// a single alternation of every rule (which could only say "some rule
// matches", not which one comes first).
func BenchmarkClassify(b *testing.B) {
	c := Default()
	long := reply{code: 550, text: strings.Repeat("the quick brown fox jumps over the lazy dog ", 6)}
	run := func(b *testing.B, c *Classifier, rs []reply) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			r := rs[i%len(rs)]
			c.Classify(r.code, r.enhanced, r.text)
		}
	}
	b.Run("table", func(b *testing.B) { run(b, c, replies) })
	b.Run("uncategorized", func(b *testing.B) { run(b, c, []reply{long}) })
	plain := *c
	plain.noLit = true
	b.Run("table-no-prefilter", func(b *testing.B) { run(b, &plain, replies) })
	b.Run("uncategorized-no-prefilter", func(b *testing.B) { run(b, &plain, []reply{long}) })
	var alts []string
	for _, r := range c.rules {
		alts = append(alts, "(?:"+r.Pattern+")")
	}
	all := regexp.MustCompile(strings.Join(alts, "|"))
	b.Run("combined-alternation", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			r := replies[i%len(replies)]
			all.MatchString(Line(r.code, r.enhanced, r.text))
		}
	})
}
