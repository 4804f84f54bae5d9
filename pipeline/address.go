package pipeline

import (
	"net/netip"
	"strings"
	"unicode/utf8"
)

// Envelope addresses follow the Mailbox grammar of RFC 5321 section 4.1.2,
// with the UTF-8 of RFC 6531 (SMTPUTF8) allowed in local parts and domains:
//
//	Mailbox    = Local-part "@" ( Domain / address-literal )
//	Local-part = Dot-string / Quoted-string
//
// An address has one canonical form, which is what Sluice keeps, spools,
// puts in events and sends inside <...>: the local part unquoted when it is
// a valid Dot-string, otherwise quoted (with '"' and '\' escaped); the
// domain as given, without a trailing dot. So "john"@x.example becomes
// john@x.example, and "odd user"@x.example and "a@b"@x.example keep their
// quotes. Recipient.Local is the local part without quotes or escapes.

// Address refusals. Syntax errors are 501 (RFC 5321 section 4.2.3) with
// X.1.3 for recipients, X.1.7 for senders (RFC 3463); a local part that
// could route mail further (ErrRoutingLocalPart) is 553 X.1.3/X.1.7.
var (
	errAddrChar     = addrErr("Invalid character in address")
	errAddrForm     = addrErr("Address must be local@domain")
	errAddrLocal    = addrErr("Invalid local part in address")
	errAddrDomain   = addrErr("Invalid domain in address")
	errAddrLiteral  = addrErr("Invalid address literal in address")
	errAddrTooLong  = addrErr("Address too long")
	errAddrEmptyLoc = addrErr("Empty local part in address")

	// ErrRoutingLocalPart refuses a local part with '%', '!' or '@': the
	// percent hack, UUCP bang paths and quoted addresses that a next hop
	// may take as a further route (like Postfix's allow_percent_hack=no
	// and swap_bangpath=no, but refused rather than kept).
	ErrRoutingLocalPart = Errorf(553, EnhancedCode{5, 1, 3},
		"Local part with '%%', '!' or '@' is not accepted (source routing)")
)

// errAddrAngle: see ParseAddress.
var errAddrAngle = addrErr("Angle brackets in a quoted local part are not accepted")

func addrErr(msg string) *Error { return Errorf(501, EnhancedCode{5, 1, 3}, "%s", msg) }

// Limits on an address. RFC 5321 section 4.5.3.1 asks to accept at least
// 64 octets of local part and 255 of domain; DNS limits a name to 253
// octets (without the trailing dot) and a label to 63.
const (
	maxAddressLen = 512
	maxDomainLen  = 253
	maxLabelLen   = 63
)

// ParseAddress parses an envelope address (a Mailbox, without the angle
// brackets) and returns its canonical form, the local part without
// quoting, and the domain in lower case. It refuses what is not a
// Mailbox: control characters (NUL, CR, LF, DEL ...) anywhere, invalid
// UTF-8, an empty or malformed local part, a domain that is not a host
// name or an IPv4 / IPv6 address literal. The errors are *Error 501
// 5.1.3. The null sender "" is not an address: see ParseSender.
func ParseAddress(addr string) (canonical, local, domain string, err error) {
	if len(addr) > maxAddressLen {
		return "", "", "", errAddrTooLong
	}
	for i := 0; i < len(addr); i++ {
		if c := addr[i]; c < 0x20 || c == 0x7f {
			return "", "", "", errAddrChar
		}
	}
	if !utf8.ValidString(addr) {
		return "", "", "", errAddrChar
	}
	var rest string
	if strings.HasPrefix(addr, `"`) {
		var ok bool
		if local, rest, ok = unquoteLocal(addr); !ok {
			return "", "", "", errAddrLocal
		}
		if !strings.HasPrefix(rest, "@") {
			return "", "", "", errAddrForm
		}
		rest = rest[1:]
		if local == "" {
			return "", "", "", errAddrEmptyLoc
		}
		if strings.ContainsAny(local, "<>") {
			// Legal quoted text, but an angle bracket inside a path is
			// where a careless next hop's parser ends the address: refused
			// here, as delivery refuses to send it, so no 250 is given for
			// mail that could not go on.
			return "", "", "", errAddrAngle
		}
	} else {
		at := strings.LastIndexByte(addr, '@') // a domain holds no '@'; a Dot-string neither
		if at < 0 || at == len(addr)-1 {
			return "", "", "", errAddrForm
		}
		local, rest = addr[:at], addr[at+1:]
		if local == "" {
			return "", "", "", errAddrForm
		}
		if !isDotString(local) {
			if strings.IndexByte(local, '@') >= 0 && isDotString(strings.ReplaceAll(local, "@", ".")) {
				// a@b@c: an unquoted '@' in the local part.
				return "", "", "", ErrRoutingLocalPart
			}
			return "", "", "", errAddrLocal
		}
	}
	dom, err := parseDomain(rest)
	if err != nil {
		return "", "", "", err
	}
	return QuoteLocalPart(local) + "@" + dom, local, strings.ToLower(dom), nil
}

// unquoteLocal reads a Quoted-string at the start of s and returns its
// content without quotes and escapes, and what follows it.
func unquoteLocal(s string) (local, rest string, ok bool) {
	var sb strings.Builder
	for i := 1; i < len(s); i++ {
		switch c := s[i]; c {
		case '"':
			return sb.String(), s[i+1:], true
		case '\\':
			// quoted-pairSMTP = %d92 %d32-126
			if i+1 >= len(s) || s[i+1] < 0x20 || s[i+1] > 0x7e {
				return "", "", false
			}
			i++
			sb.WriteByte(s[i])
		default:
			// qtextSMTP: %d32-33 / %d35-91 / %d93-126 / UTF-8 (checked
			// by the caller); control characters are refused before.
			sb.WriteByte(c)
		}
	}
	return "", "", false
}

// parseDomain checks a Domain or an address-literal and returns it as
// given, without a trailing dot (which is tolerated).
func parseDomain(d string) (string, error) {
	if strings.HasPrefix(d, "[") {
		if !strings.HasSuffix(d, "]") {
			return "", errAddrLiteral
		}
		lit := d[1 : len(d)-1]
		if v6, ok := cutPrefixFold(lit, "IPv6:"); ok {
			if a, err := netip.ParseAddr(v6); err == nil && a.Is6() && a.Zone() == "" {
				return d, nil
			}
			return "", errAddrLiteral
		}
		if a, err := netip.ParseAddr(lit); err == nil && a.Is4() {
			return d, nil
		}
		return "", errAddrLiteral
	}
	d = strings.TrimSuffix(d, ".")
	if d == "" || len(d) > maxDomainLen {
		return "", errAddrDomain
	}
	for label := range strings.SplitSeq(d, ".") {
		if label == "" || len(label) > maxLabelLen || label[0] == '-' || label[len(label)-1] == '-' {
			return "", errAddrDomain
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 0x80 || c == '-' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
				return "", errAddrDomain
			}
		}
	}
	return d, nil
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return "", false
	}
	return s[len(prefix):], true
}

// isDotString reports whether s is a Dot-string: Atom *("." Atom), where
// an atom is RFC 5322 atext or UTF-8 (RFC 6531).
func isDotString(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
			if s[i-1] == '.' {
				return false
			}
		case c >= 0x80, 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// QuoteLocalPart returns a local part (without quoting) in its canonical
// form: as it is when it is a valid Dot-string, else quoted with '"' and
// '\' escaped.
func QuoteLocalPart(local string) string {
	if isDotString(local) {
		return local
	}
	var sb strings.Builder
	sb.Grow(len(local) + 4)
	sb.WriteByte('"')
	for i := 0; i < len(local); i++ {
		if local[i] == '"' || local[i] == '\\' {
			sb.WriteByte('\\')
		}
		sb.WriteByte(local[i])
	}
	sb.WriteByte('"')
	return sb.String()
}

// JoinAddress builds the canonical address of an unquoted local part and
// a domain (e.g. from an RFC 5322 parser such as net/mail, which removes
// the quotes: split its address at the last '@', since a domain holds
// none). The result still needs ParseAddress to be validated.
func JoinAddress(local, domain string) string { return QuoteLocalPart(local) + "@" + domain }

// ParseSender parses a MAIL FROM address ("" is the null sender <>, kept
// as ""). It returns the canonical form. Refusals are those of
// ParseAddress and ErrRoutingLocalPart, with the sender's enhanced code
// X.1.7: a sender is refused what a recipient would be, because Sluice
// sends its bounces to it.
func ParseSender(addr string) (string, error) {
	if addr == "" {
		return "", nil
	}
	canon, local, _, err := ParseAddress(addr)
	if err == nil {
		err = checkRoutingLocal(local)
	}
	if err != nil {
		return "", senderErr(err)
	}
	return canon, nil
}

func senderErr(err error) error {
	if e, ok := err.(*Error); ok {
		c := *e
		c.Enhanced = EnhancedCode{c.Enhanced[0], 1, 7}
		return &c
	}
	return err
}

// checkRoutingLocal refuses a local part that a next hop may read as a
// route: '%' (percent hack), '!' (UUCP bang path) or '@' (only possible
// quoted, "a@b"@c, which some MTAs unquote into a@b@c).
func checkRoutingLocal(local string) error {
	if strings.ContainsAny(local, "%!@") {
		return ErrRoutingLocalPart
	}
	return nil
}
