package mailtext

import "strings"

// AuthReason makes s fit the reason="..." of an Authentication-Results
// entry (pipeline.AuthResult.Reason, RFC 8601 section 2.2): one line
// (OneLine), at most 200 bytes, without ';' (which would end the entry).
func AuthReason(s string) string {
	return OneLine(strings.ReplaceAll(s, ";", ","), 200)
}

// AuthPropValue makes s fit a property value of an Authentication-Results
// entry ("smtp.mailfrom=VALUE"): space, control characters, ';', '(',
// ')', '"' and '\' are dropped.
func AuthPropValue(s string) string {
	return strings.Map(func(r rune) rune {
		if r <= ' ' || r == ';' || r == '(' || r == ')' || r == '"' || r == '\\' || r == 0x7f {
			return -1
		}
		return r
	}, s)
}
