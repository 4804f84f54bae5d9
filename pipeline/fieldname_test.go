package pipeline

import (
	"bytes"
	"strings"
	"testing"

	"github.com/emersion/go-message/textproto"
)

// TestHeaderEditLongName: a header edit that adds or sets a field whose
// name go-message cannot write (74 characters or more: its folding has no
// room on the first line and panics, at the add since AddHeaderField
// formats there, at every write of the header before) is refused with an
// error naming the field; a name one shorter is added and written. A
// removal takes any name.
func TestHeaderEditLongName(t *testing.T) {
	for _, op := range []string{HeaderAdd, HeaderSet} {
		for _, n := range []int{MaxEditFieldName + 1, MaxEditFieldName + 2, 200, 1000} {
			name := "X-" + strings.Repeat("n", n-2)
			for _, value := range []string{"0", " ", "a b", strings.Repeat("v ", 100)} {
				msg := &Message{Txn: &Txn{}}
				e := &Edits{Headers: []HeaderEdit{{Op: op, Name: name, Value: value}}}
				var err error
				func() {
					defer func() {
						if p := recover(); p != nil {
							t.Fatalf("%s of a %d-character name, value %q: panic %v", op, n, value, p)
						}
					}()
					err = ApplyEdits("s", "on_message", e, msg.Txn, msg)
					if err == nil {
						_, err = msg.Bytes()
					}
				}()
				if err == nil || !strings.Contains(err.Error(), "too long") {
					t.Errorf("%s of a %d-character name: err %v, want it refused as too long", op, n, err)
				}
			}
		}
	}
	// The longest accepted name is written, with any value that folds (a
	// word of 997 characters goes on its own line, after the colon).
	name := "X-" + strings.Repeat("n", MaxEditFieldName-2)
	for _, value := range []string{"", "0", " ", " a", "a b", strings.Repeat("v ", 100), strings.Repeat("w", 997)} {
		msg := &Message{Txn: &Txn{}}
		if err := ApplyEdits("s", "on_message", &Edits{Headers: []HeaderEdit{{Op: HeaderAdd, Name: name, Value: value}}}, msg.Txn, msg); err != nil {
			t.Fatalf("a %d-character name refused: %v", len(name), err)
		}
		var b bytes.Buffer
		if err := textproto.WriteHeader(&b, msg.Header); err != nil || !strings.HasPrefix(strings.ToLower(b.String()), strings.ToLower(name)+":") {
			t.Errorf("value %q: written %.80q, %v", value[:min(len(value), 20)], b.String(), err)
		}
	}
	// Removing a field of a long name (one that came with the message).
	msg := &Message{Txn: &Txn{}}
	long := "X-" + strings.Repeat("n", 200)
	msg.Header.AddRaw([]byte(long + ": v\r\n"))
	if err := ApplyEdits("s", "on_message", &Edits{Headers: []HeaderEdit{{Op: HeaderRemove, Name: long}}}, msg.Txn, msg); err != nil || msg.Header.Has(long) {
		t.Errorf("remove of a long name: %v, still there: %v", err, msg.Header.Has(long))
	}
}

// TestHeaderEditLongValue: a header edit's value is at most
// MaxEditFieldValue bytes (a longer field would be cut by receivers such
// as Postfix); a longer one is refused with an error naming the field,
// the longest is added.
func TestHeaderEditLongValue(t *testing.T) {
	for _, op := range []string{HeaderAdd, HeaderSet} {
		msg := &Message{Txn: &Txn{}}
		v := strings.Repeat("ab ", MaxEditFieldValue/3+1)
		err := ApplyEdits("s", "on_message", &Edits{Headers: []HeaderEdit{{Op: op, Name: "X-Big", Value: v}}}, msg.Txn, msg)
		if err == nil || !strings.Contains(err.Error(), "X-Big") || !strings.Contains(err.Error(), "too long") {
			t.Errorf("%s of a %d-byte value: err %v, want it refused as too long", op, len(v), err)
		}
		if msg.Header.Len() != 0 {
			t.Errorf("%s: refused edit applied", op)
		}
		v = v[:MaxEditFieldValue]
		if err := ApplyEdits("s", "on_message", &Edits{Headers: []HeaderEdit{{Op: op, Name: "X-Big", Value: v}}}, msg.Txn, msg); err != nil {
			t.Errorf("%s of a %d-byte value: %v", op, len(v), err)
		}
	}
}

// TestAuthResultLongReason: an authentication result's reason and
// properties together are at most MaxEditFieldValue bytes: they become
// the Authentication-Results field.
func TestAuthResultLongReason(t *testing.T) {
	long := strings.Repeat("ab ", MaxEditFieldValue/3+1)
	for _, a := range []AuthResult{
		{Method: "x", Result: "pass", Reason: long},
		{Method: "x", Result: "pass", Props: []string{long[:MaxEditFieldValue/2], long[:MaxEditFieldValue/2+1]}},
	} {
		if err := a.Validate(); err == nil || !strings.Contains(err.Error(), "too long") {
			t.Errorf("reason %d bytes, props %d: err %v, want too long", len(a.Reason), len(a.Props), err)
		}
	}
	if err := (AuthResult{Method: "x", Result: "pass", Reason: long[:MaxEditFieldValue/2]}).Validate(); err != nil {
		t.Error(err)
	}
}
