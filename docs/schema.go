// Package docs holds the published artefacts of the documentation that
// code needs: the event JSON Schema.
package docs

import _ "embed"

// EventSchema is docs/event.schema.json: the JSON Schema (draft 2020-12)
// of the event, schema version 1 (pipeline.EventSchema).
//
//go:embed event.schema.json
var EventSchema []byte
