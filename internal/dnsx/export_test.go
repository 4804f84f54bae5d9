package dnsx

import "github.com/miekg/dns"

// WaitingTXT is how many LookupTXT calls for name wait for one query in
// flight (name as given to LookupTXT, ASCII).
func (c *Client) WaitingTXT(name string) int {
	return c.flight.Waiting(flightKey{cacheKey: cacheKey{dns.Fqdn(name), dns.TypeTXT}})
}
