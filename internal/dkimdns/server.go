// Package dkimdns is Sluice's authoritative DNS listener for delegated
// DKIM keys (sluice.dns_server, docs/rotation.md): it answers for one
// zone only, with its SOA and NS records and the TXT record of every
// published key at SELECTOR.DOMAIN-LABEL.ZONE, read from a Zone at each
// query so key changes need no restart. It is built on miekg/dns and
// serves UDP and TCP on the same address.
//
// Answers are authoritative (AA) and never recursive (RA clear): a
// question outside the zone is REFUSED (RFC 8906 section 3.1.4's answer
// for a server not authoritative for the name), a name that does not
// exist is NXDOMAIN and a name without records of the asked type NOERROR
// with an empty answer (NODATA), both with the SOA in the authority
// section (RFC 2308 section 3). A UDP answer larger than the client's
// EDNS0 buffer (512 octets without EDNS0, RFC 1035 section 4.2.1) is
// truncated with TC set, so the client asks again over TCP (RFC 7766).
package dkimdns

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-mta/sluice/internal/dkim"
)

// Zone is where the listener reads the published keys. Implementations
// must be safe for concurrent use and fast: Lookup runs once per query.
type Zone interface {
	// Lookup returns the TXT value at SELECTOR.LABEL.ZONE (found), and
	// whether LABEL belongs to a domain with keys (labelExists: the name
	// LABEL.ZONE exists, and SELECTOR.LABEL.ZONE without a key is NXDOMAIN
	// rather than REFUSED). Names are lower case.
	Lookup(label, selector string) (txt string, found, labelExists bool)
	// Serial is the SOA serial, growing with every change.
	Serial() uint32
}

// Options configure a Server.
type Options struct {
	Zone       string        // served zone, e.g. "dkim.relay.example"
	NS         []string      // name servers of the zone (NS records; NS[0] is the SOA MNAME)
	Hostmaster string        // SOA RNAME, e.g. "hostmaster.relay.example"
	TTL        time.Duration // TTL of every record and the SOA MINIMUM
	Logger     *slog.Logger
	// OnAnswer, when set, is called with the rcode of every answer sent
	// (for a metric); it must be fast and safe for concurrent use.
	OnAnswer func(rcode int)
}

// Server answers DNS queries for one zone. Build it with New, start it
// with Listen; Shutdown stops it.
type Server struct {
	zone   string // FQDN, lower case
	ns     []string
	rname  string
	ttl    uint32
	src    Zone
	log    *slog.Logger
	onAns  func(int)
	udp    *dns.Server
	tcp    *dns.Server
	addr   string
	closed sync.Once
}

// New returns a server for o.Zone that reads keys from src.
func New(o Options, src Zone) *Server {
	s := &Server{zone: dns.Fqdn(strings.ToLower(o.Zone)), rname: dns.Fqdn(strings.ToLower(o.Hostmaster)),
		ttl: uint32(o.TTL / time.Second), src: src, log: o.Logger, onAns: o.OnAnswer}
	if s.log == nil {
		s.log = slog.Default()
	}
	for _, n := range o.NS {
		s.ns = append(s.ns, dns.Fqdn(strings.ToLower(n)))
	}
	return s
}

// Listen binds addr (host:port; port 0 picks one free for both UDP and
// TCP) and serves until Shutdown. It returns once both sockets listen.
func (s *Server) Listen(addr string) error {
	var pc net.PacketConn
	var l net.Listener
	var err error
	for range 20 {
		pc, err = net.ListenPacket("udp", addr)
		if err != nil {
			return fmt.Errorf("dns listener %s: %w", addr, err)
		}
		l, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		if _, port, _ := net.SplitHostPort(addr); port != "0" {
			return fmt.Errorf("dns listener %s: %w", addr, err)
		}
	}
	if err != nil {
		return fmt.Errorf("dns listener %s: %w", addr, err)
	}
	s.addr = pc.LocalAddr().String()
	h := dns.HandlerFunc(s.ServeDNS)
	s.udp = &dns.Server{PacketConn: pc, Handler: h}
	s.tcp = &dns.Server{Listener: l, Handler: h, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second,
		IdleTimeout: func() time.Duration { return 10 * time.Second }}
	var started sync.WaitGroup
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		started.Add(1)
		srv.NotifyStartedFunc = started.Done
		go func() {
			if err := srv.ActivateAndServe(); err != nil {
				s.log.Error("dns listener stopped", "addr", s.addr, "err", err)
			}
		}()
	}
	started.Wait()
	return nil
}

// Addr is the address the server listens on (after Listen).
func (s *Server) Addr() string { return s.addr }

// Shutdown stops both sockets.
func (s *Server) Shutdown() error {
	var err error
	s.closed.Do(func() {
		err = errors.Join(s.udp.Shutdown(), s.tcp.Shutdown())
	})
	return err
}

// ServeDNS answers one query (dns.Handler).
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	resp := s.Answer(req)
	if resp == nil {
		return
	}
	size := dns.MinMsgSize
	if _, tcp := w.RemoteAddr().(*net.TCPAddr); tcp {
		size = dns.MaxMsgSize
	} else if o := req.IsEdns0(); o != nil {
		size = max(int(o.UDPSize()), dns.MinMsgSize)
	}
	resp.Truncate(size)
	if s.onAns != nil {
		s.onAns(resp.Rcode)
	}
	if err := w.WriteMsg(resp); err != nil {
		s.log.Debug("dns listener: writing an answer", "err", err)
	}
}

// Answer builds the response to req, nil for a message that gets none
// (a response, not a query).
func (s *Server) Answer(req *dns.Msg) *dns.Msg {
	if req.Response {
		return nil
	}
	resp := new(dns.Msg)
	if req.Opcode != dns.OpcodeQuery {
		resp.SetRcode(req, dns.RcodeNotImplemented)
		return resp
	}
	if len(req.Question) != 1 {
		resp.SetRcode(req, dns.RcodeFormatError)
		return resp
	}
	resp.SetReply(req)
	resp.RecursionAvailable = false
	if o := req.IsEdns0(); o != nil {
		if o.Version() != 0 {
			resp.SetRcode(req, dns.RcodeBadVers)
			resp.SetEdns0(4096, false)
			return resp
		}
		resp.SetEdns0(4096, false)
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	if q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY || !dns.IsSubDomain(s.zone, name) ||
		q.Qtype == dns.TypeAXFR || q.Qtype == dns.TypeIXFR { // no zone transfers (RFC 5936 section 4.2)
		resp.Rcode = dns.RcodeRefused
		return resp
	}
	resp.Authoritative = true
	var rel []string // labels below the zone, leftmost first
	if name != s.zone {
		rel = dns.SplitDomainName(strings.TrimSuffix(name, "."+s.zone))
	}
	exists := false
	switch len(rel) {
	case 0:
		exists = true
		if q.Qtype == dns.TypeSOA || q.Qtype == dns.TypeANY {
			resp.Answer = append(resp.Answer, s.soa())
		}
		if q.Qtype == dns.TypeNS || q.Qtype == dns.TypeANY {
			for _, n := range s.ns {
				resp.Answer = append(resp.Answer, &dns.NS{Hdr: s.hdr(s.zone, dns.TypeNS), Ns: n})
			}
		}
	case 1:
		_, _, exists = s.src.Lookup(rel[0], "")
	case 2:
		var txt string
		txt, exists, _ = s.src.Lookup(rel[1], rel[0])
		if exists && (q.Qtype == dns.TypeTXT || q.Qtype == dns.TypeANY) {
			resp.Answer = append(resp.Answer, &dns.TXT{Hdr: s.hdr(name, dns.TypeTXT), Txt: escapeTXT(dkim.SplitTXT(txt))})
		}
	}
	if !exists {
		resp.Rcode = dns.RcodeNameError
	}
	if len(resp.Answer) == 0 {
		resp.Ns = append(resp.Ns, s.soa())
	}
	return resp
}

func (s *Server) hdr(name string, t uint16) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: s.ttl}
}

// soa is the zone's SOA: refresh 1h, retry 10m, expire 14d (secondaries
// are possible though not needed), MINIMUM the TTL (the negative TTL,
// RFC 2308 section 4).
func (s *Server) soa() dns.RR {
	mname := s.zone
	if len(s.ns) > 0 {
		mname = s.ns[0]
	}
	return &dns.SOA{Hdr: s.hdr(s.zone, dns.TypeSOA), Ns: mname, Mbox: s.rname, Serial: s.src.Serial(),
		Refresh: 3600, Retry: 600, Expire: 14 * 86400, Minttl: s.ttl}
}

// escapeTXT keeps the bytes of TXT strings: miekg/dns reads backslash
// escapes when packing. (Key records have neither '\\' nor '"'.)
func escapeTXT(parts []string) []string {
	for i, p := range parts {
		parts[i] = strings.ReplaceAll(strings.ReplaceAll(p, `\`, `\\`), `"`, `\"`)
	}
	return parts
}
