package dkim

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/emersion/go-message/textproto"
	msgauth "github.com/emersion/go-msgauth/dkim"
)

// DefaultHeaders are the fields signed when present (RFC 6376 section
// 5.4.1's recommendation, plus the List-Unsubscribe-Post of RFC 8058).
var DefaultHeaders = []string{
	"From", "Reply-To", "Subject", "Date", "To", "Cc", "Message-ID",
	"In-Reply-To", "References", "Sender", "MIME-Version", "Content-Type",
	"Content-Transfer-Encoding", "Resent-Date", "Resent-From", "Resent-To", "Resent-Cc",
	"List-Id", "List-Help", "List-Unsubscribe", "List-Unsubscribe-Post", "List-Subscribe",
	"List-Post", "List-Owner", "List-Archive",
}

// DefaultOversign are the fields signed once more than they occur (RFC
// 6376 section 8.15), so a copy added after signing, such as a second
// From, breaks the signature.
var DefaultOversign = []string{"From", "To", "Subject", "Date", "Message-ID"}

// Options say how to sign. The zero Options signs DefaultHeaders,
// over-signs DefaultOversign, relaxed/relaxed, without expiry.
type Options struct {
	Headers  []string // fields signed when present; nil: DefaultHeaders
	Oversign []string // fields signed once more than present; nil: DefaultOversign
	// HeaderCanon and BodyCanon are "relaxed" or "simple" (RFC 6376
	// section 3.4); "" is relaxed.
	HeaderCanon, BodyCanon string
	// Expiration, when positive, sets x= that long after signing.
	Expiration time.Duration
}

// Check validates o's canonicalizations.
func (o *Options) Check() error {
	for _, c := range []string{o.HeaderCanon, o.BodyCanon} {
		switch c {
		case "", string(msgauth.CanonicalizationRelaxed), string(msgauth.CanonicalizationSimple):
		default:
			return fmt.Errorf("canonicalization %q: want relaxed or simple", c)
		}
	}
	return nil
}

func canon(c string) msgauth.Canonicalization {
	if c == "" {
		return msgauth.CanonicalizationRelaxed
	}
	return msgauth.Canonicalization(c)
}

// HeaderKeys is the h= list for a message with header h: each field of
// o's lists as many times as it occurs (none if absent), and each
// over-signed field once more. From is always included.
func (o *Options) HeaderKeys(h *textproto.Header) []string {
	headers, over := o.Headers, o.Oversign
	if headers == nil {
		headers = DefaultHeaders
	}
	if over == nil {
		over = DefaultOversign
	}
	isOver := make(map[string]bool, len(over))
	for _, k := range over {
		isOver[strings.ToLower(k)] = true
	}
	seen := map[string]bool{}
	var keys []string
	add := func(k string) {
		lk := strings.ToLower(k)
		if seen[lk] {
			return
		}
		seen[lk] = true
		n := len(h.Values(k))
		if isOver[lk] {
			n++
		}
		for i := 0; i < n; i++ {
			keys = append(keys, k)
		}
	}
	add("From")
	for _, k := range headers {
		add(k)
	}
	for _, k := range over {
		add(k)
	}
	return keys
}

// Sign computes one DKIM-Signature field per key (in order) over the
// message msg writes, whose header is h (the same bytes). Each field is
// returned whole: "DKIM-Signature: ...\r\n", folded, to prepend as is.
// Errors are the key's or the message's (a header that does not parse).
func Sign(keys []*Key, o *Options, h *textproto.Header, msg io.WriterTo) ([]string, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	hk := o.HeaderKeys(h)
	var exp time.Time
	if o.Expiration > 0 {
		exp = time.Now().Add(o.Expiration)
	}
	signers := make([]*msgauth.Signer, 0, len(keys))
	writers := make([]io.Writer, 0, len(keys))
	closeAll := func() {
		for _, s := range signers {
			_ = s.Close()
		}
	}
	for _, k := range keys {
		s, err := msgauth.NewSigner(&msgauth.SignOptions{
			Domain: k.Domain, Selector: k.Selector, Signer: k.Signer,
			HeaderCanonicalization: canon(o.HeaderCanon), BodyCanonicalization: canon(o.BodyCanon),
			HeaderKeys: hk, Expiration: exp,
		})
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("dkim %s: %w", RecordName(k.Domain, k.Selector), err)
		}
		signers = append(signers, s)
		writers = append(writers, s)
	}
	var w io.Writer = signers[0]
	if len(writers) > 1 {
		w = io.MultiWriter(writers...)
	}
	if _, err := msg.WriteTo(w); err != nil {
		closeAll()
		return nil, fmt.Errorf("dkim: %w", err)
	}
	out := make([]string, 0, len(keys))
	var firstErr error
	for i, s := range signers {
		if err := s.Close(); err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("dkim %s: %w", RecordName(keys[i].Domain, keys[i].Selector), err)
			}
			continue
		}
		out = append(out, s.Signature())
	}
	if firstErr != nil {
		return nil, firstErr
	}
	return out, nil
}
