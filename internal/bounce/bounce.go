// Package bounce classifies SMTP replies (and Sluice's own delivery
// errors, which carry the same code, enhanced code and text) into bounce
// classes such as InvalidRecipient or SpamBlock. Every deferred, bounced
// and expired event carries the class in bounce_class (docs/events.md);
// the suppression list decides on it.
//
// # Rule files
//
// Rules are read in KumoMTA's bounce classifier format (the files given to
// kumo.configure_bounce_classifier; the parser of record is KumoMTA's
// crates/bounce-classify), so operators can reuse files they already have:
//
//	[rules]
//	InvalidRecipient = [
//	  "^(451|550) [45]\\.1\\.[1234] ",
//	  "(?i)no such user",
//	]
//	QuotaIssues = [ "^552 [45]\\.2\\.2 " ]
//
// One table, rules, maps a class name to a list of regular expressions.
// The predefined class names are those of KumoMTA (Classes); any other
// name is a user-defined class and is used as given. That is the whole
// format: KumoMTA's BounceClassifierFile has only rules (no domain
// templates or other tables). One deliberate difference: KumoMTA ignores
// other top-level keys, Parse refuses them, so a traffic shaping file
// given by mistake is reported instead of loading as zero rules.
//
// Sluice's default rules (DefaultRules) are two files in this format,
// written for Sluice: reply texts of the largest providers first, then
// RFC 3463 enhanced codes, then "any other 4xx is TransientFailure".
//
// Each regular expression is matched, unanchored, against one line built
// like KumoMTA's Response::to_single_line: "CODE ENHANCED TEXT", for
// example "550 5.1.1 The email account that you tried to reach does not
// exist.", or "CODE TEXT" when the reply has no enhanced code (RFC 2034).
// Line breaks of a multi-line reply (RFC 5321 section 4.2.1) become one
// space each; the text is otherwise as the server sent it. Rules are tried
// in order: files in the order given, classes in the order they appear in
// their file, patterns in list order; the first that matches wins, and a
// reply no rule matches is Uncategorized. So put overrides in a file
// before the defaults, as with KumoMTA.
//
// # Regular expressions
//
// Patterns are Go regexp (RE2) syntax. KumoMTA uses the Rust regex crate,
// which is also RE2-like (no look-around, no backreferences), so almost
// every rule carries over. The differences a rule file can meet:
//   - \d, \w, \s and \b are ASCII-only in Go and Unicode-aware in Rust by
//     default; write [0-9] or \p{L} when it matters (replies are nearly
//     always ASCII).
//   - Rust's character class set operations ([a-z&&[^aeiou]], --, ~~),
//     the verbose flag (?x), \< \> and \b{start}, and (?R) are not
//     supported in Go.
//   - Repetition counts above 1000 ({1001,}) are refused by Go.
//
// A rule that does not compile is an error naming the file, the class and
// the rule's position in its list, e.g.
// "bounce rules /etc/sluice/bounce.toml: class SpamBlock, rule 3 "(?x) a":
// error parsing regexp: invalid or unsupported Perl syntax: `(?x`";
// nothing is loaded then (the server refuses to start).
//
// # Cost
//
// Rules are compiled once (Compile). Classify builds the line into a
// pooled buffer and tries the rules in order; before running a rule's
// regular expression it checks that the line contains one of the literals
// any match must contain (taken from the parsed expression, like RE2's
// prefilter); one pass over a lower-cased copy of the line finds every
// rule's literals at once, so most rules cost a bit test. A rule that
// cannot tell case apart runs, compiled with plain lower-case literals,
// on the lower-cased line, which Go matches faster than case folding.
// Lines with non-ASCII bytes skip both shortcuts. Go's regexp
// has no RegexSet; a combined alternation would return the leftmost match,
// not the first rule, and measured slower. Figures: BENCHMARKS.md.
package bounce

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"os"
	"regexp"
	"regexp/syntax"
	"strconv"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/BurntSushi/toml"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-mta/sluice/pipeline"
)

// The predefined classes, with KumoMTA's names and meanings.
const (
	InvalidRecipient     = "InvalidRecipient"     // the recipient does not exist
	DNSFailure           = "DNSFailure"           // a DNS lookup failed
	SpamBlock            = "SpamBlock"            // the sender (IP or domain) is blocked as a spam source
	SpamContent          = "SpamContent"          // the message was refused as spam
	ProhibitedAttachment = "ProhibitedAttachment" // the message has an attachment the receiver refuses
	RelayDenied          = "RelayDenied"          // the receiver does not relay for us
	AutoReply            = "AutoReply"            // an auto-reply (not produced by SMTP replies)
	TransientFailure     = "TransientFailure"     // a temporary failure: try later
	Subscribe            = "Subscribe"            // a subscribe request (not produced by SMTP replies)
	Unsubscribe          = "Unsubscribe"          // an unsubscribe request (not produced by SMTP replies)
	ChallengeResponse    = "ChallengeResponse"    // a challenge-response probe
	BadConfiguration     = "BadConfiguration"     // the remote host is misconfigured
	BadConnection        = "BadConnection"        // the connection failed or broke
	BadDomain            = "BadDomain"            // the recipient domain does not exist or takes no mail
	ContentRelated       = "ContentRelated"       // refused for its content (not spam)
	InactiveMailbox      = "InactiveMailbox"      // the mailbox exists but is disabled or expired
	InvalidSender        = "InvalidSender"        // the sender address or its domain is refused
	MessageExpired       = "MessageExpired"       // not delivered within the queue lifetime
	NoAnswerFromHost     = "NoAnswerFromHost"     // no connection or no answer from the host
	PolicyRelated        = "PolicyRelated"        // refused by a local policy
	ProtocolErrors       = "ProtocolErrors"       // an SMTP syntax or sequence error
	QuotaIssues          = "QuotaIssues"          // the mailbox is full or the message too large
	RelayingIssues       = "RelayingIssues"       // a relaying problem at the remote side
	RoutingErrors        = "RoutingErrors"        // mail routing failed (loop, no route)
	SpamRelated          = "SpamRelated"          // refused for spam reasons (source or content unclear)
	VirusRelated         = "VirusRelated"         // refused as carrying a virus
	AuthenticationFailed = "AuthenticationFailed" // SPF, DKIM, DMARC or reverse DNS requirements not met
	TooManyRecipients    = "TooManyRecipients"    // a per-transaction recipient limit; transient even as 5xx
	Uncategorized        = "Uncategorized"        // no rule matched
)

// Classes lists the predefined classes, in KumoMTA's order.
var Classes = []string{
	InvalidRecipient, DNSFailure, SpamBlock, SpamContent, ProhibitedAttachment, RelayDenied,
	AutoReply, TransientFailure, Subscribe, Unsubscribe, ChallengeResponse, BadConfiguration,
	BadConnection, BadDomain, ContentRelated, InactiveMailbox, InvalidSender, MessageExpired,
	NoAnswerFromHost, PolicyRelated, ProtocolErrors, QuotaIssues, RelayingIssues, RoutingErrors,
	SpamRelated, VirusRelated, AuthenticationFailed, TooManyRecipients, Uncategorized,
}

//go:embed rules/replies.toml rules/codes.toml
var defaultFS embed.FS

// DefaultFiles are the embedded default rule files, in the order they are
// read; rule errors and Rule.File name them with the prefix "default:".
var DefaultFiles = []string{"replies.toml", "codes.toml"}

// RuleFile is one parsed rule file: its rules in file order.
type RuleFile struct {
	Name  string
	Rules []Rule
}

// Rule is one pattern of a class.
type Rule struct {
	File    string // the file it came from
	Class   string
	Index   int // 1-based position in its class's list
	Pattern string
}

// Parse decodes a rule file in KumoMTA's format; name is used in errors.
// It does not compile the patterns (Compile does).
func Parse(name string, data []byte) (*RuleFile, error) {
	var doc struct {
		Rules map[string][]string `toml:"rules"`
	}
	md, err := toml.Decode(string(data), &doc)
	if err != nil {
		return nil, fmt.Errorf("bounce rules %s: %w (expected a [rules] table of Class = [\"regex\", ...])", name, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return nil, fmt.Errorf("bounce rules %s: unknown key %q: a bounce rule file holds only a [rules] table of Class = [\"regex\", ...]", name, und[0].String())
	}
	if !md.IsDefined("rules") {
		return nil, fmt.Errorf("bounce rules %s: no [rules] table (a bounce rule file is a [rules] table of Class = [\"regex\", ...])", name)
	}
	f := &RuleFile{Name: name}
	// md.Keys is in file order, which decides which rule wins.
	for _, k := range md.Keys() {
		if len(k) != 2 || k[0] != "rules" {
			continue
		}
		class := k[1]
		if class == "" {
			return nil, fmt.Errorf("bounce rules %s: empty class name", name)
		}
		for i, p := range doc.Rules[class] {
			f.Rules = append(f.Rules, Rule{File: name, Class: class, Index: i + 1, Pattern: p})
		}
	}
	return f, nil
}

// ParseFile reads and parses a rule file.
func ParseFile(path string) (*RuleFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("bounce rules: %w", err)
	}
	return Parse(path, data)
}

// DefaultRules returns the embedded default rules (rules/ in this
// package): replies.toml, the reply texts of the largest mailbox providers
// and gateways and of Sluice's own delivery errors, then codes.toml, the
// RFC 3463 enhanced status codes and a last rule making any other 4xx
// TransientFailure.
func DefaultRules() []*RuleFile {
	var out []*RuleFile
	for _, name := range DefaultFiles {
		data, err := defaultFS.ReadFile("rules/" + name)
		if err != nil {
			panic(err)
		}
		f, err := Parse("default:"+name, data)
		if err != nil {
			panic(err) // covered by the package tests
		}
		out = append(out, f)
	}
	return out
}

var defaultClassifier = sync.OnceValue(func() *Classifier {
	c, err := Compile(DefaultRules()...)
	if err != nil {
		panic(err)
	}
	return c
})

// Default returns the classifier of the default rules alone, compiled on
// first use and shared; it counts into no registry.
func Default() *Classifier { return defaultClassifier() }

// Load parses the files at paths, in order, then the default rules when
// withDefault is true, and compiles them.
func Load(paths []string, withDefault bool) (*Classifier, error) {
	var files []*RuleFile
	for _, p := range paths {
		f, err := ParseFile(p)
		if err != nil {
			return nil, err
		}
		files = append(files, f)
	}
	if withDefault {
		files = append(files, DefaultRules()...)
	}
	return Compile(files...)
}

type compiled struct {
	Rule
	re    *regexp.Regexp
	lower *regexp.Regexp // re for the lower-cased line, when re ignores case; else nil
	lits  [][]int        // groups of ids in Classifier.idx: a match contains a literal of each group
	class int            // index into Classifier.classes
	hits  atomic.Uint64
}

// Classifier maps replies to classes. It is immutable once compiled and
// safe for concurrent use; Register must be called before it is shared.
type Classifier struct {
	rules   []*compiled
	classes []string // every class that can be returned; Uncategorized last
	uncat   int
	expired int
	idx     litIndex             // every rule's literals
	counts  []prometheus.Counter // per class; nil until Register
	noLit   bool                 // benchmarks: run every regexp
}

// Compile compiles the rules of files, in order, into a classifier. A
// pattern that does not compile is an error naming its file, class and
// position.
func Compile(files ...*RuleFile) (*Classifier, error) {
	c := &Classifier{}
	idx := map[string]int{}
	classOf := func(name string) int {
		i, ok := idx[name]
		if !ok {
			i = len(c.classes)
			idx[name] = i
			c.classes = append(c.classes, name)
		}
		return i
	}
	var errs []error
	for _, f := range files {
		for _, r := range f.Rules {
			re, err := regexp.Compile(r.Pattern)
			if err != nil {
				errs = append(errs, fmt.Errorf("bounce rules %s: class %s, rule %d %q: %w", r.File, r.Class, r.Index, r.Pattern, err))
				continue
			}
			cr := &compiled{Rule: r, re: re, lower: lowered(r.Pattern), class: classOf(r.Class)}
			for _, g := range requiredLiterals(r.Pattern) {
				ids := make([]int, len(g))
				for i, l := range g {
					ids[i] = c.idx.add(l)
				}
				cr.lits = append(cr.lits, ids)
			}
			c.rules = append(c.rules, cr)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	c.uncat = classOf(Uncategorized)
	c.expired = classOf(MessageExpired)
	c.idx.build()
	return c, nil
}

// Register creates the counter sluice_bounce_classified_total{class}
// (classifications per class; the label values are the classes of the
// rule files, a bounded set, all exported at zero from the start) in reg.
// Call it once, before the classifier is shared; reg nil counts nothing.
func (c *Classifier) Register(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_bounce_classified_total",
		Help: "Deferred, bounced and expired recipients per bounce class (bounce_class in events).",
	}, []string{"class"})
	if err := reg.Register(vec); err != nil {
		return fmt.Errorf("bounce: registering metrics: %w", err)
	}
	counts := make([]prometheus.Counter, len(c.classes))
	for i, name := range c.classes {
		counts[i] = vec.WithLabelValues(name)
	}
	c.counts = counts
	return reg.Register(ruleHits{c, prometheus.NewDesc("sluice_bounce_rule_hits_total",
		"Replies each classification rule matched first (file, class, 1-based position in the class's list); rules come from the loaded files, so the label set is bounded.",
		[]string{"file", "class", "rule"}, nil)})
}

// ruleHits exports Hits at scrape time.
type ruleHits struct {
	c    *Classifier
	desc *prometheus.Desc
}

func (r ruleHits) Describe(ch chan<- *prometheus.Desc) { ch <- r.desc }

func (r ruleHits) Collect(ch chan<- prometheus.Metric) {
	for _, h := range r.c.Hits() {
		ch <- prometheus.MustNewConstMetric(r.desc, prometheus.CounterValue, float64(h.Hits),
			h.File, h.Class, strconv.Itoa(h.Index))
	}
}

// scratch is the per-call state, pooled.
type scratch struct {
	buf  []byte   // the line, then its lower-case copy
	seen []uint64 // bit set of the literal ids found in the line
}

var scratchPool = sync.Pool{New: func() any { return &scratch{buf: make([]byte, 0, 512)} }}

// Classify returns the class of a reply: code is the SMTP reply code
// (RFC 5321 section 4.2), enhanced the enhanced status code without the
// reply code ("5.1.1", RFC 3463; "" when the reply has none) and text the
// reply text (lines joined by CR LF or LF). It never fails: a reply no
// rule matches is Uncategorized. It counts the result in the class's
// metric and the rule's hit count. Safe for concurrent use; no allocation
// in the common case (BenchmarkClassify).
func (c *Classifier) Classify(code int, enhanced, text string) string {
	return c.count(c.classify(code, enhanced, text))
}

// ClassifyResponse classifies an event's response; nil is Uncategorized.
func (c *Classifier) ClassifyResponse(r *pipeline.Response) string {
	return c.count(c.classifyResponse(r))
}

// ClassifyExpired classifies the last reply of a recipient whose queue
// lifetime ran out (an expired event): the class of that reply when it
// says more than "try later", else MessageExpired. So a recipient that
// was deferred with "452 4.2.2 mailbox full" until it expired is
// QuotaIssues, one deferred by greylisting or an unknown 4xx (or with no
// reply at all) is MessageExpired.
func (c *Classifier) ClassifyExpired(last *pipeline.Response) string {
	i := c.classifyResponse(last)
	if n := c.classes[i]; n == TransientFailure || n == Uncategorized {
		i = c.expired
	}
	return c.count(i)
}

func (c *Classifier) count(class int) string {
	if c.counts != nil {
		c.counts[class].Inc()
	}
	return c.classes[class]
}

func (c *Classifier) classifyResponse(r *pipeline.Response) int {
	if r == nil {
		return c.uncat
	}
	return c.classify(r.Code, r.Enhanced, r.Text)
}

func (c *Classifier) classify(code int, enhanced, text string) int {
	sc := scratchPool.Get().(*scratch)
	line := appendLine(sc.buf[:0], code, enhanced, text)
	n := len(line)
	full, ascii := appendLower(line, line)
	line, lower := full[:n], full[n:]
	filter := ascii && !c.noLit
	if filter {
		sc.seen = c.idx.scan(lower, sc.seen)
	}
	class := c.uncat
	for _, r := range c.rules {
		if filter && !allGroups(sc.seen, r.lits) {
			continue
		}
		var m bool
		if filter && r.lower != nil {
			m = r.lower.Match(lower)
		} else {
			m = r.re.Match(line)
		}
		if m {
			r.hits.Add(1)
			class = r.class
			break
		}
	}
	if cap(full) <= 64<<10 {
		sc.buf = full[:0]
		scratchPool.Put(sc)
	}
	return class
}

// Line returns the line the rules are matched against, for tools and
// tests.
func Line(code int, enhanced, text string) string {
	return string(appendLine(nil, code, enhanced, text))
}

// Hits returns the number of matches of each rule since Compile, in rule
// order.
func (c *Classifier) Hits() []RuleHits {
	out := make([]RuleHits, len(c.rules))
	for i, r := range c.rules {
		out[i] = RuleHits{Rule: r.Rule, Hits: r.hits.Load()}
	}
	return out
}

// RuleHits is a rule and its match count.
type RuleHits struct {
	Rule
	Hits uint64
}

func appendLine(b []byte, code int, enhanced, text string) []byte {
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, ' ')
	if enhanced != "" {
		b = append(b, enhanced...)
		b = append(b, ' ')
	}
	// As KumoMTA's remove_line_break: CR LF and a lone LF or CR become
	// one space each.
	for i := 0; i < len(text); i++ {
		switch ch := text[i]; ch {
		case '\r':
			if i+1 < len(text) && text[i+1] == '\n' {
				continue
			}
			b = append(b, ' ')
		case '\n':
			b = append(b, ' ')
		default:
			b = append(b, ch)
		}
	}
	return b
}

// appendLower appends the ASCII lower-case of s to b and reports whether
// s is all ASCII.
func appendLower(b, s []byte) ([]byte, bool) {
	ascii := true
	for _, ch := range s {
		if ch >= utf8.RuneSelf {
			ascii = false
		} else if 'A' <= ch && ch <= 'Z' {
			ch += 'a' - 'A'
		}
		b = append(b, ch)
	}
	return b, ascii
}

// requiredLiterals returns, lower-cased, groups of ASCII literals such
// that every match of pattern contains, for each group, one of its
// literals (an AND of ORs); nil when it finds none worth checking (each
// literal at least 3 bytes, at most 16 in a group). It is a filter in the
// way of RE2's prefilter: a concatenation needs every part's groups, an
// alternation one literal of each branch's best group. It only has to be
// right, not complete, so anything else (classes, stars, optional parts)
// just yields no group.
func requiredLiterals(pattern string) [][][]byte {
	re, err := syntax.Parse(pattern, syntax.Perl)
	if err != nil {
		return nil
	}
	return literalsOf(re)
}

const (
	minLiteral  = 3
	maxLiterals = 16
)

func literalsOf(re *syntax.Regexp) [][][]byte {
	switch re.Op {
	case syntax.OpLiteral:
		lit := make([]byte, 0, len(re.Rune))
		for _, r := range re.Rune {
			if r >= utf8.RuneSelf {
				return nil
			}
			ch := byte(r)
			if 'A' <= ch && ch <= 'Z' {
				ch += 'a' - 'A'
			}
			lit = append(lit, ch)
		}
		// Case-folded or not, a match on an ASCII line contains the
		// lower-cased literal in the lower-cased line; (?i)k also
		// matches the Kelvin sign, but non-ASCII lines skip the filter.
		if len(lit) < minLiteral {
			return nil
		}
		return [][][]byte{{lit}}
	case syntax.OpCapture, syntax.OpPlus:
		return literalsOf(re.Sub[0])
	case syntax.OpRepeat:
		if re.Min >= 1 {
			return literalsOf(re.Sub[0])
		}
	case syntax.OpConcat:
		var all [][][]byte
		for _, sub := range re.Sub {
			all = append(all, literalsOf(sub)...)
		}
		return all
	case syntax.OpAlternate:
		var any [][]byte
		for _, sub := range re.Sub {
			groups := literalsOf(sub)
			if groups == nil {
				return nil
			}
			best := groups[0]
			for _, g := range groups[1:] {
				if minLen(g) > minLen(best) || minLen(g) == minLen(best) && len(g) < len(best) {
					best = g
				}
			}
			any = append(any, best...)
		}
		if len(any) > maxLiterals {
			return nil
		}
		return [][][]byte{any}
	}
	return nil
}

func minLen(s [][]byte) int {
	m := -1
	for _, l := range s {
		if m < 0 || len(l) < m {
			m = len(l)
		}
	}
	return m
}

// lowered returns pattern compiled for matching the ASCII-lower-cased
// line, or nil. It exists when the pattern cannot tell case apart on ASCII
// (every letter literal is case-folded, every class holds both cases of
// its ASCII letters): then it matches an ASCII line exactly when the
// lowered pattern (plain lower-case literals, no folding, which Go's
// matcher compares faster) matches the lower-cased line.
func lowered(pattern string) *regexp.Regexp {
	re, err := syntax.Parse(pattern, syntax.Perl)
	if err != nil || !caseBlind(re) {
		return nil
	}
	lowerLiterals(re)
	l, err := regexp.Compile(re.String())
	if err != nil {
		return nil
	}
	return l
}

func caseBlind(re *syntax.Regexp) bool {
	switch re.Op {
	case syntax.OpLiteral:
		for _, r := range re.Rune {
			if r >= utf8.RuneSelf {
				return false
			}
			if isLetter(r) && re.Flags&syntax.FoldCase == 0 {
				return false
			}
		}
	case syntax.OpCharClass:
		in := func(c rune) bool {
			for i := 0; i+1 < len(re.Rune); i += 2 {
				if re.Rune[i] <= c && c <= re.Rune[i+1] {
					return true
				}
			}
			return false
		}
		for c := 'a'; c <= 'z'; c++ {
			if in(c) != in(c-'a'+'A') {
				return false
			}
		}
	}
	for _, sub := range re.Sub {
		if !caseBlind(sub) {
			return false
		}
	}
	return true
}

func lowerLiterals(re *syntax.Regexp) {
	if re.Op == syntax.OpLiteral {
		for i, r := range re.Rune {
			if 'A' <= r && r <= 'Z' {
				re.Rune[i] = r + 'a' - 'A'
			}
		}
		re.Flags &^= syntax.FoldCase
	}
	for _, sub := range re.Sub {
		lowerLiterals(sub)
	}
}

func isLetter(r rune) bool { return 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' }

// litIndex finds, in one pass over a line, which of a set of literals
// (each at least minLiteral bytes) it contains: literals are bucketed by
// a hash of their first two bytes, and each position of the line looks
// at its bucket only. (A multi-pattern matcher in the spirit of
// Aho-Corasick, small enough for the few hundred literals of rule files.)
type litIndex struct {
	lits  [][]byte
	ids   map[string]int
	start []uint32 // bucket b holds order[start[b]:start[b+1]]
	order []uint32 // literal ids, by bucket
}

const litBuckets = 4096

func litHash(a, b byte) uint32 { return (uint32(a)<<5 ^ uint32(b)) & (litBuckets - 1) }

// add returns the id of lit, adding it if new.
func (x *litIndex) add(lit []byte) int {
	if id, ok := x.ids[string(lit)]; ok {
		return id
	}
	if x.ids == nil {
		x.ids = map[string]int{}
	}
	x.ids[string(lit)] = len(x.lits)
	x.lits = append(x.lits, lit)
	return len(x.lits) - 1
}

func (x *litIndex) build() {
	x.start = make([]uint32, litBuckets+1)
	for _, l := range x.lits {
		x.start[litHash(l[0], l[1])+1]++
	}
	for b := 1; b <= litBuckets; b++ {
		x.start[b] += x.start[b-1]
	}
	x.order = make([]uint32, len(x.lits))
	next := append([]uint32(nil), x.start[:litBuckets]...)
	for id, l := range x.lits {
		h := litHash(l[0], l[1])
		x.order[next[h]] = uint32(id)
		next[h]++
	}
}

// scan returns seen, reset and resized, with the bit of every literal s
// contains set.
func (x *litIndex) scan(s []byte, seen []uint64) []uint64 {
	words := (len(x.lits) + 63) / 64
	if cap(seen) < words {
		seen = make([]uint64, words)
	}
	seen = seen[:words]
	clear(seen)
	if len(x.lits) == 0 {
		return seen
	}
	for i := 0; i+1 < len(s); i++ {
		h := litHash(s[i], s[i+1])
		for _, id := range x.order[x.start[h]:x.start[h+1]] {
			if bytes.HasPrefix(s[i:], x.lits[id]) {
				seen[id/64] |= 1 << (id % 64)
			}
		}
	}
	return seen
}

// allGroups reports whether each group has one of its bits set in seen.
func allGroups(seen []uint64, groups [][]int) bool {
next:
	for _, g := range groups {
		for _, id := range g {
			if seen[id/64]&(1<<(id%64)) != 0 {
				continue next
			}
		}
		return false
	}
	return true
}
