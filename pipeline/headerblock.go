package pipeline

import (
	"bytes"

	"github.com/emersion/go-message/textproto"
)

// ParseHeaderBlock parses a header section as Sluice writes it (the
// header_block of a plugin call, protocol 1.2): fields of a name, optional
// spaces or tabs, a colon and a value, continued on lines that start with
// a space or a tab, every line ended by CRLF, the empty line last and
// nothing after it. It returns the header ParseMessage returns for such a
// block, field for field, at about half the cost: each field's raw bytes
// are the block's, not copied through a buffer and then line by line. ok
// is false for anything else (an empty header too); parse that with
// ParseMessage, which takes every defect it tolerates. block must not
// change while the header is in use.
func ParseHeaderBlock(block []byte) (h textproto.Header, ok bool) {
	var starts [32]int
	fields := starts[:0] // where each field starts, then where the last ends
	fields, ok = scanHeaderBlock(block, fields, true)
	if !ok {
		return h, false
	}
	for i := len(fields) - 1; i > 0; i-- { // AddRaw prepends
		h.AddRaw(block[fields[i-1]:fields[i]])
	}
	return h, true
}

// scanHeaderBlock reports whether block is a header block as
// ParseHeaderBlock takes it; with record, it appends to fields where each
// field starts and then where the last one ends.
func scanHeaderBlock(block []byte, fields []int, record bool) (_ []int, ok bool) {
	pos, n := 0, 0
	for {
		nl := bytes.IndexByte(block[pos:], '\n')
		if nl < 1 || block[pos+nl-1] != '\r' {
			return fields, false
		}
		line := block[pos : pos+nl+1]
		switch {
		case len(line) == 2: // the empty line: last
			if pos+2 != len(block) || n == 0 {
				return fields, false
			}
			if record {
				fields = append(fields, pos)
			}
			return fields, true
		case line[0] == ' ' || line[0] == '\t':
			if pos == 0 {
				return fields, false
			}
		case isFieldLine(line):
			n++
			if record {
				fields = append(fields, pos)
			}
		default:
			return fields, false
		}
		pos += nl + 1
	}
}
