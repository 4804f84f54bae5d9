// Package tlsrpttest checks TLS reports in tests: the RFC 8460 section
// 4.4 report format as a JSON schema (report.schema.json, written from
// the RFC's field list and examples), compiled with formats asserted.
package tlsrpttest

import (
	"bytes"
	_ "embed"
	"sync"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

//go:embed report.schema.json
var schemaJSON []byte

var (
	once   sync.Once
	schema *jsonschema.Schema
	err    error
)

// Check validates a report's JSON against the schema.
func Check(js []byte) error {
	once.Do(func() {
		doc, e := jsonschema.UnmarshalJSON(bytes.NewReader(schemaJSON))
		if e != nil {
			err = e
			return
		}
		c := jsonschema.NewCompiler()
		c.DefaultDraft(jsonschema.Draft2020)
		c.AssertFormat()
		if err = c.AddResource("urn:ietf:rfc:8460:report", doc); err != nil {
			return
		}
		schema, err = c.Compile("urn:ietf:rfc:8460:report")
	})
	if err != nil {
		return err
	}
	v, e := jsonschema.UnmarshalJSON(bytes.NewReader(js))
	if e != nil {
		return e
	}
	return schema.Validate(v)
}

// Validate fails t unless js is a valid report.
func Validate(t testing.TB, js []byte) {
	t.Helper()
	if e := Check(js); e != nil {
		t.Fatalf("report does not validate against RFC 8460's schema: %v\n%s", e, js)
	}
}
