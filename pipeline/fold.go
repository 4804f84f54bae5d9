package pipeline

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Folding of the header fields Sluice adds (header edits of stages and
// plugins, Received, Authentication-Results).
//
// RFC 5322 section 2.2.3: a field is folded by inserting a CRLF before a
// space or tab (WSP) already in it; unfolding removes only the CRLFs, so
// a field folded only at its own blanks reads back exactly as it was
// given. Section 2.1.1: a line SHOULD be at most 78 characters and MUST be
// at most 998, without the CRLF. FoldField folds in one pass over the
// value (linear time; go-message's folding is quadratic), and the field is
// then stored formatted (textproto.Header.AddRaw): writing the header
// copies it and never formats it again.
//
// Where it folds, by preference:
//
//  1. at a "clean" blank: a single space between two other characters.
//     go-message's reader (Header.Get, and so every later stage, Lua's
//     msg:header and the plugin SDK) trims the blanks around each line
//     break and joins the lines with one space, so only such a fold reads
//     back unchanged there too. The line is made as long as possible up to
//     78 characters; when no clean blank comes within 78, at the first one
//     after (a line of up to 998 characters rather than a fold that changes
//     what Sluice's own reader sees);
//  2. when no clean blank comes within 998 characters: at the last other
//     blank (a tab, a run of blanks) that keeps the line within 998. The
//     bytes are still exact (RFC 5322 unfolding gives the value back), but
//     go-message's reader then sees the blanks at that fold as one space;
//  3. when the first word itself does not fit after "Name: ", right after
//     the colon ("Name:" CRLF SP value, which unfolds to "Name: value").
//
// A line never holds only blanks (section 3.2.2 and the obsolete syntax of
// section 4.2), so a fold goes only at a blank that follows other text on
// its line. A value that cannot be written so, with every line within 998
// characters (a run of more than 997 characters without a space or tab,
// or pathological runs of blanks around long words), gets a *FoldError:
// header edits are refused with it (ApplyEdits, the Lua functions, plugin
// edits); the relay's own fields (AddHeaderField) are split instead.
//
// Spaces and tabs at either end of a value are dropped: RFC 5322 readers
// (go-message among them) drop the blanks after the colon and at the end
// of a field, so they could not be read back anyway, and DKIM's relaxed
// canonicalization drops them too.

const (
	// FoldPreferredLine is the line length, in bytes without the CRLF,
	// that folding aims for (RFC 5322 section 2.1.1: SHOULD be at most 78
	// characters).
	FoldPreferredLine = 78
	// MaxHeaderLine is the longest header line Sluice writes for a field
	// it adds, in bytes without the CRLF (RFC 5322 section 2.1.1: MUST be
	// at most 998 characters).
	MaxHeaderLine = 998
)

// FoldError is the error for a header field value that cannot be folded
// into lines of at most MaxHeaderLine bytes: the run of Run bytes without
// a space or tab at byte Offset of the value (as given, before its end
// blanks are trimmed), after Blanks blanks on its line, does not fit.
type FoldError struct {
	Field  string // the field name as given
	Offset int
	Run    int
	Blanks int // blanks before the run on its line (0 or 1 when the run alone is too long)
}

func (e *FoldError) Error() string {
	blanks := ""
	if e.Blanks > 1 {
		blanks = fmt.Sprintf(", after %d spaces or tabs,", e.Blanks)
	}
	return fmt.Sprintf("the value of header field %s cannot be folded into lines of at most %d characters (RFC 5322 section 2.1.1): the %d characters without a space or tab from byte %d%s do not fit on one line",
		e.Field, MaxHeaderLine, e.Run, e.Offset, blanks)
}

// FoldField returns the header field "name: value" as Sluice writes the
// fields it adds, CRLF included: value trimmed of spaces and tabs at both
// ends, folded as the comment at the top of this file says (in time
// linear in its length), name written as given. The bytes are for
// textproto.Header.AddRaw; a value read back from them (AddRaw, go-message's ReadHeader)
// is the trimmed value, unless folding had to fall back to a tab or a run
// of blanks (point 2 above). Errors: a name that is not printable
// US-ASCII without ':' (RFC 5322 section 3.6.8), a value with CR or LF,
// or a *FoldError.
func FoldField(name, value string) ([]byte, error) {
	if !validFieldName(name) {
		return nil, fmt.Errorf("invalid header field name %q", name)
	}
	if i := strings.IndexAny(value, "\r\n"); i >= 0 {
		return nil, fmt.Errorf("the value of header field %s contains CR or LF (at byte %d)", name, i)
	}
	f := newFolder(name, value)
	return f.fold(true)
}

// CheckFold returns the *FoldError FoldField would return for value, or
// nil, without building the field: ApplyEdits and the Lua header
// functions refuse an added or set value with it. name must be a valid
// field name and value free of CR and LF (checked before).
func CheckFold(name, value string) error {
	f := newFolder(name, value)
	_, err := f.fold(false)
	return err
}

// folder folds one field. Positions are in u = " " + v: u[0] is the blank
// after the colon, u[i] is v[i-1]. A line starts at -1 (the first, after
// "name:") or at a blank of u (a fold point: the line begins with it).
type folder struct {
	name string
	v    string // the value, trimmed of blanks at both ends
	lead int    // blanks trimmed at its start (for error offsets)
	pre  int    // len(name)+1: "name:" on the first line
	// pref and max are FoldPreferredLine and MaxHeaderLine (smaller in
	// tests, to compare with every folding of short values).
	pref, max int
	cf        []uint64 // nil, or the fold points after which the rest can be folded (finishable)
}

func newFolder(name, value string) folder {
	v := strings.TrimLeft(value, " \t")
	lead := len(value) - len(v)
	return folder{name: name, v: strings.TrimRight(v, " \t"), lead: lead, pre: len(name) + 1,
		pref: FoldPreferredLine, max: MaxHeaderLine}
}

func isBlank(c byte) bool { return c == ' ' || c == '\t' }

func (f *folder) at(i int) byte {
	if i == 0 {
		return ' '
	}
	return f.v[i-1]
}

// width is the length of the line from s to e (u positions, e excluded).
func (f *folder) width(s, e int) int {
	if s < 0 {
		return f.pre + e
	}
	return e - s
}

// fold folds the field, into a new slice when emit is set. It tries the
// preferences alone first; if that leads to a line that cannot end within
// MaxHeaderLine, it works out which fold points leave a rest that can be
// folded (finishable) and folds again choosing only among those, so a
// value is refused only when no folding at all fits.
func (f *folder) fold(emit bool) ([]byte, error) {
	n := len(f.v) + 1
	var out []byte
	if emit {
		out = make([]byte, 0, f.pre+n+n/32+8)
	}
	out, stuck := f.lines(out, n)
	if stuck == done {
		return out, nil
	}
	if !f.finishable(n) {
		return nil, f.errorAt(stuck, n)
	}
	// finishable said a folding exists, and lines now takes only
	// finishable fold points: this cannot be stuck (FuzzFoldFeasible).
	if out, stuck = f.lines(out[:0], n); stuck != done {
		return nil, f.errorAt(stuck, n)
	}
	return out, nil
}

const done = -2

// lines writes the field's lines to out (when it is not nil) and returns
// done, or the start of the line that cannot end within MaxHeaderLine.
func (f *folder) lines(out []byte, n int) ([]byte, int) {
	if out != nil {
		out = append(append(out, f.name...), ':')
	}
	for s := -1; ; {
		e := f.next(s, n)
		if e < 0 {
			return out, s
		}
		if out != nil {
			a := max(s, 0)
			if a == 0 && e > 0 {
				out = append(out, ' ')
				a = 1
			}
			if e > a {
				out = append(out, f.v[a-1:e-1]...)
			}
			out = append(out, '\r', '\n')
		}
		if e == n {
			return out, done
		}
		s = e
	}
}

// next returns where the line that starts at s ends: n (the rest of the
// value), a fold point, or -1 when no fold point lets it end within
// MaxHeaderLine. With f.cf set, only finishable fold points are taken.
func (f *folder) next(s, n int) int {
	if f.width(s, n) <= f.pref || f.v == "" {
		return n
	}
	i, text := s+1, false // a continuation line starts with its fold's blank
	if s < 0 {
		i, text = 0, true // the field name is on the first line
	}
	clean, other, colon := -1, -1, false
	for ; i < n; i++ {
		w := f.width(s, i)
		if w > f.pref && clean >= 0 {
			return clean // the last clean blank within 78
		}
		if w > f.max {
			break
		}
		c := f.at(i)
		if !isBlank(c) {
			text = true
			continue
		}
		if !text || f.cf != nil && f.cf[i/64]&(1<<(i%64)) == 0 {
			continue
		}
		switch {
		case i == 0:
			colon = true
		case c == ' ' && !isBlank(f.at(i-1)) && !isBlank(f.at(i+1)): // i+1 < n: v ends with text
			if w > f.pref {
				return i // none within 78: the first clean blank after
			}
			clean = i
		default:
			other = i
		}
	}
	switch {
	case clean >= 0:
		return clean
	case i == n && f.width(s, n) <= f.max:
		return n // one long line rather than a fold at a tab or a run of blanks
	case other >= 0:
		return other
	case colon:
		return 0
	}
	return -1
}

// finishable records in f.cf the fold points p from which the rest of the
// value can be written in lines of at most MaxHeaderLine (a line from p
// ends at n, or at a finishable fold point q after some text, within
// MaxHeaderLine of p), in one backward pass, and reports whether the
// first line can end so too.
func (f *folder) finishable(n int) bool {
	f.cf = make([]uint64, (n+63)/64)
	last, after := -1, -1 // the first finishable point; the first after the text at hand
	for i := n - 1; i >= 0; i-- {
		if !isBlank(f.at(i)) {
			after = last
			continue
		}
		if n-i <= f.max || after >= 0 && after-i <= f.max {
			f.cf[i/64] |= 1 << (i % 64)
			last = i
		}
	}
	return f.pre+n <= f.max || last >= 0 && f.pre+last <= f.max
}

// errorAt describes the run of text that the line starting at s cannot
// hold.
func (f *folder) errorAt(s, n int) *FoldError {
	t := s + 1
	for t < n && isBlank(f.at(t)) {
		t++
	}
	r := t
	for r < n && !isBlank(f.at(r)) {
		r++
	}
	e := &FoldError{Field: f.name, Offset: f.lead + t - 1, Run: r - t}
	if s >= 0 {
		e.Blanks = t - s
	}
	return e
}

// relaxFold returns value changed so that it can be folded: runs of more
// than relaxRun bytes without a blank are cut by a space (at a UTF-8
// character boundary), runs of blanks are cut to relaxRun. Any line from
// a blank then holds at most 2*relaxRun+1 bytes before the next fold point.
// Only for the relay's own fields (AddHeaderField), never for an edit.
func relaxFold(value string) string {
	var b strings.Builder
	b.Grow(len(value) + len(value)/relaxRun + 1)
	run, blank := 0, false
	for i := 0; i < len(value); i++ {
		c := value[i]
		if isBlank(c) != blank {
			run, blank = 0, isBlank(c)
		}
		if run >= relaxRun {
			if blank {
				continue
			}
			if utf8.RuneStart(c) || run >= relaxRun+utf8.UTFMax {
				b.WriteByte(' ')
				run = 0
			}
		}
		b.WriteByte(c)
		run++
	}
	return b.String()
}

const relaxRun = 400
