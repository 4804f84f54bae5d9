package config

import (
	"path/filepath"
	"time"
)

// APIKeysFile is where API key hashes live: apikeys.json beside the spool
// directory (not inside it: the spool database is locked while the server
// runs, and `sluice apikey` must work then).
func (c *Config) APIKeysFile() string {
	return filepath.Join(filepath.Dir(filepath.Clean(c.Spool.Path)), "apikeys.json")
}

// HistoryRetention is how long a message's event timeline stays queryable
// (GET /v1/messages/{id}) after it was received: the queue lifetime plus
// two days.
func (c *Config) HistoryRetention() time.Duration {
	return c.Delivery.QueueLifetime + 48*time.Hour
}
