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
	pos := 0
	for {
		nl := bytes.IndexByte(block[pos:], '\n')
		if nl < 1 || block[pos+nl-1] != '\r' {
			return h, false
		}
		line := block[pos : pos+nl+1]
		switch {
		case len(line) == 2: // the empty line: last
			if pos+2 != len(block) || len(fields) == 0 {
				return h, false
			}
			fields = append(fields, pos)
			for i := len(fields) - 1; i > 0; i-- { // AddRaw prepends
				h.AddRaw(block[fields[i-1]:fields[i]])
			}
			return h, true
		case line[0] == ' ' || line[0] == '\t':
			if pos == 0 {
				return h, false
			}
		case isFieldLine(line):
			fields = append(fields, pos)
		default:
			return h, false
		}
		pos += nl + 1
	}
}
