package httpapi

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/testutil"
)

// logLines returns the JSON log lines of buf whose msg is msg.
func logLines(buf *testutil.SyncBuffer, msg string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(buf.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// TestAccessLog: with access_log every request is one line (method, path
// without the query, status, bytes, duration, client address) and no
// credential is logged; without it, none.
func TestAccessLog(t *testing.T) {
	for _, on := range []bool{true, false} {
		logs := &testutil.SyncBuffer{}
		e := newEnv(t, envOptions{noDelivery: true, logs: logs, listener: config.HTTPListener{AccessLog: on}})
		mustAccept(t, e.post("/v1/messages", map[string]any{"from": "a@example.com", "to": "b@dest.test", "text": "x"}))
		if r := e.do("GET", "/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV?recipient=secret@dest.test", e.sendKey, nil); r.Status != 404 {
			t.Fatalf("unknown message: %d", r.Status)
		}
		lines := logLines(logs, "http request")
		if !on {
			if len(lines) != 0 {
				t.Errorf("access_log off: %d lines", len(lines))
			}
			continue
		}
		if len(lines) != 2 {
			t.Fatalf("access_log on: %d lines, want 2: %v", len(lines), lines)
		}
		want := []struct {
			method, path string
			status       float64
		}{{"POST", "/v1/messages", 202}, {"GET", "/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV", 404}}
		for i, w := range want {
			l := lines[i]
			if l["method"] != w.method || l["path"] != w.path || l["status"] != w.status || l["remote_ip"] != "127.0.0.1" ||
				l["bytes"].(float64) <= 0 || l["duration_seconds"].(float64) <= 0 {
				t.Errorf("line %d: %v", i, l)
			}
		}
		all := logs.String()
		if strings.Contains(all, "secret@") || strings.Contains(all, e.sendKey) {
			t.Error("the access log has the query or the API key")
		}
	}
}
