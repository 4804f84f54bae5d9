package relay

import (
	"strings"

	"github.com/sluice-mta/sluice/pipeline"
)

// tlsRequiredNo reports whether msg's header has "TLS-Required: No" (RFC
// 8689 section 5; the value is case-insensitive, white space around it is
// ignored). Any other value means nothing: the field has no other.
func tlsRequiredNo(msg *pipeline.Message) bool {
	for _, v := range msg.Header.Values("TLS-Required") {
		if strings.EqualFold(strings.TrimSpace(v), "No") {
			return true
		}
	}
	return false
}
