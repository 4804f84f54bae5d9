package mtasts

// Waiting is how many Gets for domain wait for one resolution in flight.
func (c *Cache) Waiting(domain string) int { return c.flight.Waiting(domain) }
