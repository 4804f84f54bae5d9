package capture

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"time"
)

// A summary is stored in a compact binary form: a capture encodes one
// and Open decodes every one, and JSON cost about 9 µs per capture (and
// most of a reopen's summary load). Summaries written as JSON by earlier
// versions (they start with '{') are still read.
//
// The form: summaryV1, then the fields in the order of encodeSummary:
// strings and lists as a uvarint length then their bytes (items),
// Created as a varint of Unix nanoseconds, Size and Attachments as
// varints. A later version adds fields after these with another first
// byte.
const summaryV1 = 1

var errSummaryShort = errors.New("captured message summary: truncated")

// encodeSummary appends sm's stored form to b.
func encodeSummary(b []byte, sm *Summary) []byte {
	b = append(b, summaryV1)
	for _, s := range []string{sm.ID, sm.Tenant, sm.MessageID, sm.Sender, sm.From, sm.Subject, sm.HeaderID, sm.Source} {
		b = appendString(b, s)
	}
	b = binary.AppendVarint(b, sm.Created.UnixNano())
	for _, l := range [][]string{sm.Recipients, sm.To, sm.Cc, sm.Tags} {
		b = binary.AppendUvarint(b, uint64(len(l)))
		for _, s := range l {
			b = appendString(b, s)
		}
	}
	b = binary.AppendVarint(b, int64(sm.Size))
	return binary.AppendVarint(b, int64(sm.Attachments))
}

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// decodeSummary reads a stored summary (binary, or JSON from earlier
// versions). Lists are never nil.
func decodeSummary(v []byte) (*Summary, error) {
	sm := &Summary{}
	if len(v) > 0 && v[0] == '{' {
		if err := json.Unmarshal(v, sm); err != nil {
			return nil, err
		}
		for _, l := range []*[]string{&sm.Recipients, &sm.To, &sm.Cc, &sm.Tags} {
			if *l == nil {
				*l = []string{}
			}
		}
		return sm, nil
	}
	if len(v) == 0 || v[0] != summaryV1 {
		return nil, errors.New("captured message summary: unknown encoding")
	}
	d := summaryDecoder{b: v[1:]}
	for _, p := range []*string{&sm.ID, &sm.Tenant, &sm.MessageID, &sm.Sender, &sm.From, &sm.Subject, &sm.HeaderID, &sm.Source} {
		*p = d.string()
	}
	sm.Created = time.Unix(0, d.varint()).UTC()
	for _, p := range []*[]string{&sm.Recipients, &sm.To, &sm.Cc, &sm.Tags} {
		n := d.uvarint()
		if n > uint64(len(d.b)) { // each item takes a byte at least
			d.err = errSummaryShort
			break
		}
		l := make([]string, n)
		for i := range l {
			l[i] = d.string()
		}
		*p = l
	}
	sm.Size = int(d.varint())
	sm.Attachments = int(d.varint())
	if d.err != nil {
		return nil, d.err
	}
	return sm, nil
}

// summaryDecoder reads encodeSummary's fields; the first error sticks
// (later reads return zero values).
type summaryDecoder struct {
	b   []byte
	err error
}

func (d *summaryDecoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	x, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errSummaryShort
		return 0
	}
	d.b = d.b[n:]
	return x
}

// varint reads a binary.AppendVarint value: a zigzag uvarint.
func (d *summaryDecoder) varint() int64 {
	x := d.uvarint()
	return int64(x>>1) ^ -int64(x&1)
}

func (d *summaryDecoder) string() string {
	n := d.uvarint()
	if d.err != nil {
		return ""
	}
	if n > uint64(len(d.b)) {
		d.err = errSummaryShort
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}
