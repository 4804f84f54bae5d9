package pipeline

import (
	"slices"
	"strconv"
	"unicode/utf8"
)

// AppendJSON appends ev's JSON form, the public event schema, to b: byte
// for byte what encoding/json's Marshal(ev) returns (field order, omitted
// empty fields, sorted metadata keys, HTML-safe string escaping, invalid
// UTF-8 as \ufffd), without reflection. Every accepted and every delivered
// message records events, and json.Marshal of one was 1–4 µs on the
// benchmark machine (issue 21); see BenchmarkEventJSON. On error (a time
// whose year is outside 0–9999, as json.Marshal refuses it) b is returned
// unchanged.
//
// It does not modify ev and is safe for concurrent use on a shared event.
func (ev *Event) AppendJSON(b []byte) ([]byte, error) {
	orig := b
	b = append(b, `{"schema":`...)
	b = strconv.AppendInt(b, int64(ev.Schema), 10)
	b = appendField(b, "event_id", ev.EventID)
	b = appendField(b, "type", ev.Type)
	b = append(b, `,"time":"`...)
	b, err := ev.Time.AppendText(b)
	if err != nil {
		return orig, err
	}
	b = append(b, '"')
	b = appendField(b, "message_id", ev.MessageID)
	b = appendField(b, "recipient", ev.Recipient)
	b = appendField(b, "sender", ev.Sender)
	b = appendField(b, "source", ev.Source)
	b = appendField(b, "tenant", ev.Tenant)
	b = appendField(b, "queue", ev.Queue)
	b = append(b, `,"attempt":`...)
	b = strconv.AppendInt(b, int64(ev.Attempt), 10)
	if r := ev.Response; r != nil {
		b = append(b, `,"response":{"code":`...)
		b = strconv.AppendInt(b, int64(r.Code), 10)
		b = appendField(b, "enhanced", r.Enhanced)
		b = appendField(b, "text", r.Text)
		b = append(b, '}')
	}
	if r := ev.Remote; r != nil {
		b = append(b, `,"remote":{"host":`...)
		b = appendJSONString(b, r.Host)
		b = appendField(b, "ip", r.IP)
		b = appendField(b, "tls", r.TLS)
		b = appendNonEmpty(b, "tls_cipher", r.TLSCipher)
		b = appendNonEmpty(b, "tls_policy", r.TLSPolicy)
		if r.TLSValidated {
			b = append(b, `,"tls_validated":true`...)
		}
		b = appendNonEmpty(b, "mta_sts_failure", r.MTASTSFailure)
		b = appendNonEmpty(b, "tls_failure", r.TLSFailure)
		b = append(b, '}')
	}
	b = appendField(b, "bounce_class", ev.BounceClass)
	b = append(b, `,"tags":`...)
	if ev.Tags == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i, t := range ev.Tags {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, t)
		}
		b = append(b, ']')
	}
	b = append(b, `,"metadata":`...)
	b = appendStringMap(b, ev.Metadata)
	b = append(b, `,"size":`...)
	b = strconv.AppendInt(b, int64(ev.Size), 10)
	b = appendField(b, "node", ev.Node)
	if ev.RequireTLS {
		b = append(b, `,"require_tls":true`...)
	}
	if g := ev.Engagement; g != nil {
		b = append(b, `,"engagement":{`...)
		if g.URL != "" {
			b = append(b, `"url":`...)
			b = appendJSONString(b, g.URL)
			b = append(b, ',')
		}
		b = append(b, `"user_agent":`...)
		b = appendJSONString(b, g.UserAgent)
		b = append(b, `,"machine":`...)
		b = strconv.AppendBool(b, g.Machine)
		b = appendNonEmpty(b, "machine_reason", g.MachineReason)
		b = appendNonEmpty(b, "method", g.Method)
		b = append(b, '}')
	}
	return append(b, '}'), nil
}

// appendField appends `,"name":` and s as a JSON string.
func appendField(b []byte, name, s string) []byte {
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':')
	return appendJSONString(b, s)
}

// appendNonEmpty is appendField for an omitempty string field.
func appendNonEmpty(b []byte, name, s string) []byte {
	if s == "" {
		return b
	}
	return appendField(b, name, s)
}

// appendStringMap appends m as encoding/json does: null for nil, keys in
// sorted order.
func appendStringMap(b []byte, m map[string]string) []byte {
	if m == nil {
		return append(b, "null"...)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, k)
		b = append(b, ':')
		b = appendJSONString(b, m[k])
	}
	return append(b, '}')
}

const jsonHex = "0123456789abcdef"

// appendJSONString appends s quoted as encoding/json's Marshal quotes a
// string (HTML-safe): '"' and '\\' escaped, control characters as \b, \f,
// \n, \r, \t or \u00XX, '<', '>' and '&' as \u003c, \u003e, \u0026,
// U+2028 and U+2029 as \u2028 and \u2029, and each byte of invalid UTF-8
// as \ufffd.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', jsonHex[c>>4], jsonHex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', jsonHex[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
