package testutil

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/sluice-mta/sluice/docs"
)

var (
	schemaOnce sync.Once
	schema     *jsonschema.Schema
	schemaErr  error
)

// EventSchema returns docs/event.schema.json compiled, with formats
// (date-time, ipv4, ipv6) asserted. It is compiled once per test binary.
func EventSchema() (*jsonschema.Schema, error) {
	schemaOnce.Do(func() {
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(docs.EventSchema))
		if err != nil {
			schemaErr = fmt.Errorf("docs/event.schema.json: %w", err)
			return
		}
		c := jsonschema.NewCompiler()
		c.DefaultDraft(jsonschema.Draft2020)
		c.AssertFormat()
		const url = "urn:sluice:event:1" // its $id
		if err := c.AddResource(url, doc); err != nil {
			schemaErr = fmt.Errorf("docs/event.schema.json: %w", err)
			return
		}
		schema, schemaErr = c.Compile(url)
	})
	return schema, schemaErr
}

// CheckEvent validates one event's JSON against the event schema and
// returns the validator's error (nil when valid).
func CheckEvent(js []byte) error {
	sch, err := EventSchema()
	if err != nil {
		return err
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(js))
	if err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	return sch.Validate(v)
}

// ValidateEvent fails t unless js, one event's JSON object, is valid
// against docs/event.schema.json.
func ValidateEvent(t testing.TB, js []byte) {
	t.Helper()
	if err := CheckEvent(js); err != nil {
		t.Errorf("event does not match docs/event.schema.json: %v\nevent: %s", err, js)
	}
}

// ValidateEventValue is ValidateEvent for a decoded event (a
// pipeline.Event or a pointer to one): it is encoded with encoding/json
// first, as the spool does.
func ValidateEventValue(t testing.TB, ev any) {
	t.Helper()
	js, err := json.Marshal(ev)
	if err != nil {
		t.Fatalf("encoding event: %v", err)
	}
	ValidateEvent(t, js)
}

// ValidateEvents validates every line of a JSONL events file's content;
// a last line without its newline (being written) is skipped, and so are
// empty lines.
func ValidateEvents(t testing.TB, jsonl []byte) {
	t.Helper()
	if i := bytes.LastIndexByte(jsonl, '\n'); i+1 < len(jsonl) {
		jsonl = jsonl[:i+1]
	}
	sc := bufio.NewScanner(bytes.NewReader(jsonl))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		ValidateEvent(t, sc.Bytes())
	}
}
