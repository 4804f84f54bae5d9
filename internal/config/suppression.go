package config

import (
	lua "github.com/yuin/gopher-lua"
)

// Suppression: sluice.suppression { enabled = true, classes = {...} }.
// The per-tenant suppression list (docs/config.md).
type Suppression struct {
	// Enabled: hard bounces of Classes add the recipient to its tenant's
	// list, and listed recipients are refused at RCPT. Default true. When
	// false the list is kept and the API still manages it, but it is
	// neither fed nor enforced.
	Enabled bool
	// Classes are the bounce classes (bounce_class of a "bounced" event)
	// that add the recipient. Default InvalidRecipient, InactiveMailbox,
	// BadDomain.
	Classes []string
}

// DefaultSuppression returns the suppression defaults.
func DefaultSuppression() Suppression {
	return Suppression{Enabled: true, Classes: []string{"InvalidRecipient", "InactiveMailbox", "BadDomain"}}
}

// sluice.suppression { enabled = true, classes = { "InvalidRecipient", "InactiveMailbox", "BadDomain" } }
func (ld *loader) suppression(L *lua.LState) int {
	const fn = "sluice.suppression"
	ld.singleton(fn)
	o := ld.s.CheckOpts(1, fn, "enabled", "classes")
	o.Bool("enabled", &ld.cfg.Suppression.Enabled)
	var classes []string
	if o.Strings("classes", &classes) {
		seen := map[string]bool{}
		ld.cfg.Suppression.Classes = ld.cfg.Suppression.Classes[:0:0]
		for _, c := range classes {
			if !validClassName(c) {
				o.Fail("classes", "%q is not a bounce class name (letters and digits, e.g. \"InvalidRecipient\")", c)
			}
			if !seen[c] {
				seen[c] = true
				ld.cfg.Suppression.Classes = append(ld.cfg.Suppression.Classes, c)
			}
		}
	}
	return 0
}

// validClassName accepts KumoMTA-style class names: 1 to 64 ASCII letters
// and digits.
func validClassName(c string) bool {
	if c == "" || len(c) > 64 {
		return false
	}
	for i := 0; i < len(c); i++ {
		b := c[i]
		if !('a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9') {
			return false
		}
	}
	return true
}
