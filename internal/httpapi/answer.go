package httpapi

import "strconv"

// appendMessageAnswer appends the JSON of a messageAnswer exactly as
// json.Marshal writes it, without reflection: the 202 answer of every
// accepted message (issue 21 measured json.Marshal there at about 0.7% of
// the relay's CPU under the HTTP benchmark). It reports false, having
// appended nothing, when a string needs escaping (a quote, a backslash,
// a control or non-ASCII character, or one of <, > and & that json.Marshal
// escapes); the caller then uses json.Marshal.
func appendMessageAnswer(dst []byte, a *messageAnswer) ([]byte, bool) {
	if !plainJSON(a.ID) {
		return dst, false
	}
	for i := range a.Recipients {
		r := &a.Recipients[i]
		if !plainJSON(r.Email) || !plainJSON(r.Status) || !plainJSON(r.Enhanced) || !plainJSON(r.Message) {
			return dst, false
		}
	}
	dst = append(dst, `{"id":"`...)
	dst = append(dst, a.ID...)
	dst = append(dst, `","recipients":`...)
	if a.Recipients == nil {
		return append(dst, "null}"...), true
	}
	dst = append(dst, '[')
	for i := range a.Recipients {
		r := &a.Recipients[i]
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"email":"`...)
		dst = append(dst, r.Email...)
		dst = append(dst, `","status":"`...)
		dst = append(dst, r.Status...)
		dst = append(dst, '"')
		if r.Code != 0 {
			dst = append(dst, `,"code":`...)
			dst = strconv.AppendInt(dst, int64(r.Code), 10)
		}
		if r.Enhanced != "" {
			dst = append(dst, `,"enhanced":"`...)
			dst = append(dst, r.Enhanced...)
			dst = append(dst, '"')
		}
		if r.Message != "" {
			dst = append(dst, `,"message":"`...)
			dst = append(dst, r.Message...)
			dst = append(dst, '"')
		}
		dst = append(dst, '}')
	}
	return append(dst, "]}"...), true
}

// plainJSON reports whether json.Marshal writes s between quotes unchanged:
// printable ASCII other than ", \, <, > and &.
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}
