// Package dnstest runs an authoritative-looking DNS server on loopback for
// tests: it serves records from an in-memory zone over UDP and TCP on the
// same 127.0.0.1 port, and can be told to fail for chosen names. Point a
// dnsx.Client (dnsx.Options{Server: s.Addr()}) or the sluice binary
// (sluice.delivery { resolver = ... }) at it.
//
// Names that have no record at all (and are not the parent of a name that
// has one) get NXDOMAIN; names that exist without records of the asked
// type get NOERROR with an empty answer (NODATA). Both negative answers
// carry an SOA in the authority section whose TTL and MINIMUM are the
// negative TTL (SetNegativeTTL, default 0), as RFC 2308 section 3
// requires. A name with a CNAME (AddCNAME) answers any other type with the
// CNAME followed by the target's answer, as a recursive resolver does; the
// rcode is the last name's (RFC 6604). UDP answers larger than the
// client's advertised buffer (512 bytes without EDNS0) are truncated with
// the TC bit, so clients must retry over TCP as real resolvers require.
//
// The server plays a validating resolver for DNSSEC tests: names marked
// with SetSecure get answers with the AD bit set (RFC 4035 section
// 3.2.3) when the query asked for it (AD or DO set); every name on a
// CNAME chain must be secure for the answer to be. No signatures are
// served.
//
// Records are served with TTL 0 unless SetTTL says otherwise, so a caching
// client sees changes made in the middle of a test. All methods are safe to
// call from any goroutine while the server runs; the server stops when the
// test ends.
package dnstest

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
)

// Server is a DNS server on loopback. Create it with NewServer.
type Server struct {
	t    testing.TB
	addr string
	udp  *dns.Server
	tcp  *dns.Server

	queries atomic.Int64

	mu       sync.Mutex
	ttl      uint32
	negTTL   uint32
	records  map[string][]dns.RR // by lower-case FQDN
	servfail map[string]bool
	drop     map[string]bool
	secure   map[string]bool
	hold     chan struct{} // non-nil: queries wait for it to close
}

// NewServer starts a server on 127.0.0.1 (UDP and TCP, same port) and
// registers its shutdown with t.Cleanup.
func NewServer(t testing.TB) *Server {
	t.Helper()
	s := &Server{
		t:        t,
		records:  make(map[string][]dns.RR),
		servfail: make(map[string]bool),
		drop:     make(map[string]bool),
		secure:   make(map[string]bool),
	}
	pc, l, err := ListenPair()
	if err != nil {
		t.Fatalf("dnstest: %v", err)
	}
	s.addr = pc.LocalAddr().String()
	h := dns.HandlerFunc(s.serve)
	s.udp = &dns.Server{PacketConn: pc, Handler: h}
	s.tcp = &dns.Server{Listener: l, Handler: h}

	var started sync.WaitGroup
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		started.Add(1)
		srv.NotifyStartedFunc = started.Done
		go func() {
			// ActivateAndServe returns when Shutdown is called.
			_ = srv.ActivateAndServe()
		}()
	}
	started.Wait()
	t.Cleanup(func() {
		_ = s.udp.Shutdown()
		_ = s.tcp.Shutdown()
	})
	return s
}

// ListenPair binds one 127.0.0.1 port for both UDP and TCP, trying up to
// 20 ports the kernel picks (a UDP port's TCP twin may be taken). The
// caller owns and closes both sockets.
func ListenPair() (net.PacketConn, net.Listener, error) {
	var lastErr error
	for i := 0; i < 20; i++ {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, err
		}
		l, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, l, nil
		}
		lastErr = err
		pc.Close()
	}
	return nil, nil, fmt.Errorf("no port free for both UDP and TCP: %v", lastErr)
}

// Addr returns the server's address, "127.0.0.1:port".
func (s *Server) Addr() string { return s.addr }

// Queries returns how many queries the server has received.
func (s *Server) Queries() int { return int(s.queries.Load()) }

// SetTTL sets the TTL of records added from now on (default 0).
func (s *Server) SetTTL(ttl uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ttl = ttl
}

// SetNegativeTTL sets the TTL and MINIMUM of the SOA sent with NXDOMAIN
// and NODATA answers from now on (default 0: not cacheable).
func (s *Server) SetNegativeTTL(ttl uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.negTTL = ttl
}

func (s *Server) add(rr dns.RR) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rr.Header().Ttl = s.ttl
	name := strings.ToLower(rr.Header().Name)
	s.records[name] = append(s.records[name], rr)
}

func (s *Server) hdr(name string, t uint16) dns.RR_Header {
	return dns.RR_Header{Name: dns.Fqdn(strings.ToLower(name)), Rrtype: t, Class: dns.ClassINET}
}

// AddMX adds an MX record for domain pointing at host with preference pref.
func (s *Server) AddMX(domain string, pref uint16, host string) {
	s.add(&dns.MX{Hdr: s.hdr(domain, dns.TypeMX), Preference: pref, Mx: dns.Fqdn(host)})
}

// SetNullMX replaces domain's MX records with the null MX of RFC 7505
// (a single MX with preference 0 and the root as host).
func (s *Server) SetNullMX(domain string) {
	s.mu.Lock()
	name := dns.Fqdn(strings.ToLower(domain))
	var keep []dns.RR
	for _, rr := range s.records[name] {
		if rr.Header().Rrtype != dns.TypeMX {
			keep = append(keep, rr)
		}
	}
	s.records[name] = keep
	s.mu.Unlock()
	s.add(&dns.MX{Hdr: s.hdr(domain, dns.TypeMX), Preference: 0, Mx: "."})
}

// AddA adds an address record for host: an A record for an IPv4 address,
// an AAAA record for an IPv6 one. A malformed ip fails the test.
func (s *Server) AddA(host, ip string) {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		s.t.Fatalf("dnstest: AddA(%q, %q): %v", host, ip, err)
		return
	}
	if a.Is4() || a.Is4In6() {
		s.add(&dns.A{Hdr: s.hdr(host, dns.TypeA), A: net.IP(a.Unmap().AsSlice())})
		return
	}
	s.add(&dns.AAAA{Hdr: s.hdr(host, dns.TypeAAAA), AAAA: net.IP(a.AsSlice())})
}

// AddAAAA adds an AAAA record; it is AddA for readers who like the type
// spelled out.
func (s *Server) AddAAAA(host, ip string) { s.AddA(host, ip) }

// AddTXT adds one TXT record whose character-strings are txt, sent byte
// for byte (for SPF, DKIM and DMARC tests; long values must be split by
// the caller into strings of at most 255 bytes).
func (s *Server) AddTXT(name string, txt ...string) {
	esc := make([]string, len(txt))
	for i, t := range txt {
		// miekg/dns reads backslash escapes when packing; keep the bytes.
		esc[i] = strings.ReplaceAll(t, `\`, `\\`)
	}
	s.add(&dns.TXT{Hdr: s.hdr(name, dns.TypeTXT), Txt: esc})
}

// AddCNAME makes name an alias of target. Queries for name of any type but
// CNAME are answered with the CNAME and then target's records.
func (s *Server) AddCNAME(name, target string) {
	s.add(&dns.CNAME{Hdr: s.hdr(name, dns.TypeCNAME), Target: dns.Fqdn(strings.ToLower(target))})
}

// AddTLSA adds a TLSA record for the TLS service at host and TCP port
// (owner _PORT._tcp.HOST) with association data data.
func (s *Server) AddTLSA(host string, port int, usage, selector, matching uint8, data []byte) {
	name := fmt.Sprintf("_%d._tcp.%s", port, host)
	s.add(&dns.TLSA{Hdr: s.hdr(name, dns.TypeTLSA), Usage: usage, Selector: selector,
		MatchingType: matching, Certificate: fmt.Sprintf("%x", data)})
}

// SetSecure marks names as DNSSEC-validated (secure) or not: answers
// about them carry the AD bit when the query asked for it.
func (s *Server) SetSecure(secure bool, names ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range names {
		n = dns.Fqdn(strings.ToLower(n))
		if secure {
			s.secure[n] = true
		} else {
			delete(s.secure, n)
		}
	}
}

// SetServfail makes every query for name (any type) answer SERVFAIL.
func (s *Server) SetServfail(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.servfail[dns.Fqdn(strings.ToLower(name))] = true
}

// SetTimeout makes the server ignore queries for name, so clients time out.
func (s *Server) SetTimeout(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.drop[dns.Fqdn(strings.ToLower(name))] = true
}

// Remove deletes every record of name and clears SetServfail and
// SetTimeout for it.
func (s *Server) Remove(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := dns.Fqdn(strings.ToLower(name))
	delete(s.records, n)
	delete(s.servfail, n)
	delete(s.drop, n)
}

// Hold makes queries wait, unanswered, until the returned release is
// called (it is also called when the test ends). Queries still count in
// Queries while they wait. Tests use it to have several lookups in flight
// at once.
func (s *Server) Hold() (release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := make(chan struct{})
	s.hold = ch
	var once sync.Once
	release = func() {
		once.Do(func() {
			s.mu.Lock()
			if s.hold == ch {
				s.hold = nil
			}
			s.mu.Unlock()
			close(ch)
		})
	}
	s.t.Cleanup(release)
	return release
}

func (s *Server) serve(w dns.ResponseWriter, req *dns.Msg) {
	s.queries.Add(1)
	s.mu.Lock()
	hold := s.hold
	s.mu.Unlock()
	if hold != nil {
		<-hold
	}
	if len(req.Question) != 1 {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeFormatError)
		_ = w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)

	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	m.RecursionAvailable = true

	s.mu.Lock()
	if s.drop[name] {
		s.mu.Unlock()
		return
	}
	s.answerLocked(m, name, q.Qtype)
	if (m.Rcode == dns.RcodeNameError || m.Rcode == dns.RcodeSuccess) && !hasType(m.Answer, q.Qtype) {
		m.Ns = append(m.Ns, s.soaLocked(name))
	}
	if m.Rcode == dns.RcodeNameError || m.Rcode == dns.RcodeSuccess {
		do := req.IsEdns0() != nil && req.IsEdns0().Do()
		ad := (req.AuthenticatedData || do) && s.secure[name]
		for _, rr := range m.Answer {
			if cn, ok := rr.(*dns.CNAME); ok && !s.secure[strings.ToLower(cn.Target)] {
				ad = false
			}
		}
		m.AuthenticatedData = ad
	}
	s.mu.Unlock()

	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(opt.UDPSize(), false)
	}
	if w.LocalAddr().Network() == "udp" {
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil && int(opt.UDPSize()) > size {
			size = int(opt.UDPSize())
		}
		m.Truncate(size)
	}
	_ = w.WriteMsg(m)
}

// answerLocked fills m's answer and rcode for name, following CNAMEs.
func (s *Server) answerLocked(m *dns.Msg, name string, qtype uint16) {
	for range 8 {
		switch {
		case s.drop[name]:
			m.Rcode = dns.RcodeServerFailure // a resolver would give up
			return
		case s.servfail[name]:
			m.Rcode = dns.RcodeServerFailure
			return
		case !s.existsLocked(name):
			m.Rcode = dns.RcodeNameError
			return
		}
		var next string
		for _, rr := range s.records[name] {
			t := rr.Header().Rrtype
			switch {
			case qtype == dns.TypeANY || t == qtype:
				m.Answer = append(m.Answer, dns.Copy(rr))
			case t == dns.TypeCNAME:
				m.Answer = append(m.Answer, dns.Copy(rr))
				next = rr.(*dns.CNAME).Target
			}
		}
		if next == "" {
			return
		}
		name = next
	}
}

func hasType(rrs []dns.RR, qtype uint16) bool {
	for _, rr := range rrs {
		if rr.Header().Rrtype == qtype {
			return true
		}
	}
	return false
}

// soaLocked is the SOA for a negative answer about name, owned by name's
// last label (the test "zone").
func (s *Server) soaLocked(name string) dns.RR {
	zone := name
	if labels := dns.SplitDomainName(name); len(labels) > 0 {
		zone = dns.Fqdn(labels[len(labels)-1])
	}
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: s.negTTL},
		Ns:      "ns." + zone,
		Mbox:    "hostmaster." + zone,
		Serial:  1,
		Refresh: 3600,
		Retry:   600,
		Expire:  86400,
		Minttl:  s.negTTL,
	}
}

// existsLocked reports whether name owns records or is an ancestor of a
// name that does (an "empty non-terminal", which is NOERROR, not NXDOMAIN).
func (s *Server) existsLocked(name string) bool {
	if len(s.records[name]) > 0 {
		return true
	}
	for k, rrs := range s.records {
		if len(rrs) > 0 && strings.HasSuffix(k, "."+name) {
			return true
		}
	}
	return false
}
