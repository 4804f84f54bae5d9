// Package dsn builds delivery status notifications (bounces and delay
// warnings) as RFC 3464 multipart/report messages.
//
// Build takes a Report — who reports, the original envelope sender, when
// the message arrived, its header, and one entry per recipient with the
// action, status and the remote server's diagnostic — and returns a
// complete RFC 5322 message with CRLF line endings, ready to be spooled and
// sent with the null reverse-path (MAIL FROM:<>) to the original sender.
// It has three parts:
//
//  1. text/plain: a human-readable explanation;
//  2. message/delivery-status: the machine-readable per-message and
//     per-recipient fields;
//  3. the original message: its header section as text/rfc822-headers
//     (RET=HDRS, and the default), or the whole message as message/rfc822
//     when the sender asked for it (RET=FULL, Report.ReturnFull) and it
//     is at most Report.MaxReturn bytes (default MaxReturn) and can be
//     carried as it is; otherwise the headers, and the text says why.
//
// The MIME structure is written with github.com/emersion/go-message; the
// delivery-status body is a plain field list and is written by hand, with
// every value sanitised: control characters (CR, LF, NUL ...) become
// spaces so a remote server's text cannot inject fields or lines, values
// are cut to a bounded length, and long values are folded so that no line
// exceeds 998 characters.
//
// RecipientFromError turns a delivery error (a *pipeline.Error, possibly
// carrying a *delivery.ReplyError) into a Recipient entry. Wants applies
// a recipient's RFC 3461 NOTIFY; XtextEncode and XtextDecode are the
// xtext of ENVID and ORCPT; Notice is how the queue reports an outcome
// that may call for a DSN (see relay.(*Relay).Notify).
//
// Not handled: internationalised addresses in the report are written with
// the "utf-8" address type of RFC 6533 but the parts keep their RFC 3464
// media types (message/delivery-status, message/rfc822, not the
// message/global-* types of RFC 6533).
package dsn

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"mime"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"

	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/internal/mailtext"
	"github.com/sluice-mta/sluice/pipeline"
)

// Actions (RFC 3464 section 2.3.3).
const (
	ActionFailed    = "failed"
	ActionDelayed   = "delayed"
	ActionDelivered = "delivered"
	ActionRelayed   = "relayed"
	ActionExpanded  = "expanded"
)

// Report is everything a DSN says.
type Report struct {
	// ReportingMTA is our host name: "Reporting-MTA: dns; <it>" and the
	// From: MAILER-DAEMON@<it>. Required.
	ReportingMTA string
	// Sender is the original envelope sender; the report is addressed to
	// it. Required: never send a report about a message whose sender is
	// the null path <> (that is how bounce loops start).
	Sender string
	// MessageID is Sluice's id of the original message; it is shown in the
	// text and as "X-Sluice-Message-ID" in the per-message fields.
	// Optional.
	MessageID string
	// EnvelopeID is the original ENVID (RFC 3461), if any.
	EnvelopeID string
	// Arrival is when the original message was accepted: Arrival-Date.
	// Zero omits it.
	Arrival time.Time
	// Header is the original message: the whole message, or only its
	// header section (then ReturnFull cannot return it). Unless the whole
	// message is returned, only the part before the first empty line is
	// used.
	Header []byte
	// ReturnFull asks for the whole message back (RFC 3461 RET=FULL) as a
	// message/rfc822 part. A message larger than MaxReturn, or one that
	// cannot be carried as it is (NUL, a bare CR, a line longer than 998
	// characters), is returned as its headers, with a sentence saying so.
	ReturnFull bool
	// MaxReturn is the largest message ReturnFull returns, in bytes; 0
	// means MaxReturn.
	MaxReturn int
	// Recipients are the recipients this report is about. At least one.
	Recipients []Recipient

	// Date is the report's Date; zero means time.Now().
	Date time.Time
	// ReportID is the left part of the report's Message-ID (the right part
	// is ReportingMTA); empty means random.
	ReportID string
	// Boundary is the MIME boundary; empty means random. Tests set it.
	Boundary string
}

// Recipient is one per-recipient block of the report.
type Recipient struct {
	// Address is the final recipient, as used in RCPT TO.
	Address string
	// OriginalRecipient is the recipient's ORCPT parameter, xtext decoded:
	// "rfc822;bob@example.org" (a value without a type gets the type of
	// its address). Written as Original-Recipient (RFC 3464 section
	// 2.3.1), only when the sender gave an ORCPT. Optional.
	OriginalRecipient string
	// Action is ActionFailed or ActionDelayed (or, for success reports,
	// delivered, relayed, expanded).
	Action string
	// Status is the RFC 3463 code, "5.1.1". Empty or malformed means
	// 5.0.0 for failed and 4.0.0 for delayed, 2.0.0 otherwise.
	Status string
	// DiagnosticCode is "type; text", normally "smtp; 550 5.1.1 no such
	// user"; a value without a "type;" prefix gets "smtp; ". Optional.
	DiagnosticCode string
	// RemoteMTA is the host name of the server that gave the diagnostic.
	// Optional.
	RemoteMTA string
	// LastAttempt is when delivery was last tried. Zero omits it.
	LastAttempt time.Time
	// WillRetryUntil is, for delayed recipients, when the queue gives up.
	// Zero omits it.
	WillRetryUntil time.Time
}

// Errors returned by Build.
var (
	ErrNullSender   = errors.New("dsn: the original sender is the null path; no report may be sent")
	ErrNoRecipients = errors.New("dsn: a report needs at least one recipient")
)

// MaxReturn is the default cap on a message returned in full (RET=FULL):
// 5 MiB. A report goes to the sender's mail server, whose size limit we do
// not know; the smallest common default is Postfix's message_size_limit
// of 10,240,000 bytes, and a report over it is refused and lost (it comes
// from <>, so no one hears of it). Half of it leaves room for the report's
// own parts and for a 7-bit hop's base64 on the way. A larger message is
// returned as its headers.
const MaxReturn = 5 << 20

// Length limits.
const (
	maxDiagnostic = 4000 // bytes of diagnostic text kept
	maxValue      = 900  // bytes of other field values kept
	maxLine       = 998  // RFC 5322 line limit, CRLF excluded
	foldAt        = 78   // preferred line length when folding
)

var statusRE = regexp.MustCompile(`^[245]\.[0-9]{1,3}\.[0-9]{1,3}$`)

// Build renders r as a complete RFC 3464 report message with CRLF line
// endings. It fails only on a caller's mistake: a missing sender, host
// name or recipient, or an unknown action.
func Build(r Report) ([]byte, error) {
	host := clean(r.ReportingMTA, 255)
	sender := clean(r.Sender, maxValue)
	switch {
	case sender == "":
		return nil, ErrNullSender
	case host == "":
		return nil, errors.New("dsn: ReportingMTA is required")
	case len(r.Recipients) == 0:
		return nil, ErrNoRecipients
	}
	failed, delayed := 0, 0
	for i, rc := range r.Recipients {
		switch rc.Action {
		case ActionFailed:
			failed++
		case ActionDelayed:
			delayed++
		case ActionDelivered, ActionRelayed, ActionExpanded:
		default:
			return nil, fmt.Errorf("dsn: recipient %d: unknown action %q", i, rc.Action)
		}
		if clean(rc.Address, maxValue) == "" {
			return nil, fmt.Errorf("dsn: recipient %d: empty address", i)
		}
	}
	date := r.Date
	if date.IsZero() {
		date = time.Now()
	}
	id := clean(r.ReportID, 200)
	if id == "" {
		var b [12]byte
		rand.Read(b[:])
		id = hex.EncodeToString(b[:])
	}
	id = strings.NewReplacer(" ", "", "<", "", ">", "", "@", "").Replace(id)

	subject := "Successful Mail Delivery Report"
	switch {
	case failed > 0:
		subject = "Undelivered Mail Returned to Sender"
	case delayed > 0:
		subject = "Delayed Mail (still being retried)"
	}

	orig := returned(r, failed > 0)
	boundary := r.Boundary
	for boundary == "" || (r.Boundary == "" && bytes.Contains(orig.body, []byte("--"+boundary))) {
		var b [24]byte
		rand.Read(b[:])
		boundary = hex.EncodeToString(b[:])
	}
	var h message.Header
	fields := [][2]string{
		{"From", "Mail Delivery System <MAILER-DAEMON@" + host + ">"},
		{"To", "<" + sender + ">"},
		{"Subject", subject},
		{"Date", date.Format(time.RFC1123Z)},
		{"Message-ID", "<" + id + "@" + host + ">"},
		{"MIME-Version", "1.0"},
		{"Auto-Submitted", "auto-replied"},
		{"Content-Type", mime.FormatMediaType("multipart/report",
			map[string]string{"report-type": "delivery-status", "boundary": boundary})},
	}
	addFields(&h.Header, fields)

	var buf bytes.Buffer
	buf.Grow(4096 + len(orig.body))
	mw, err := message.CreateWriter(&buf, h)
	if err != nil {
		return nil, fmt.Errorf("dsn: %w", err)
	}

	// 1. Human-readable explanation.
	text := humanText(r, host, orig.note)
	cte := "quoted-printable"
	if mailtext.IsASCII(text) {
		cte = "7bit"
	}
	if err := writePart(mw, "text/plain; charset=utf-8", "Notification", cte, []byte(text)); err != nil {
		return nil, err
	}

	// 2. Machine-readable status.
	status := deliveryStatus(r, host)
	cte = "7bit"
	if mailtext.Has8Bit(status) {
		cte = "8bit"
	}
	if err := writePart(mw, "message/delivery-status", "Delivery report", cte, status); err != nil {
		return nil, err
	}

	// 3. The original message, or its header.
	if err := writePart(mw, orig.contentType, orig.description, orig.cte, orig.body); err != nil {
		return nil, err
	}

	if err := mw.Close(); err != nil {
		return nil, fmt.Errorf("dsn: %w", err)
	}
	return buf.Bytes(), nil
}

// addFields adds fields so they are written in the given order (go-message
// writes the most recently added field first), spelled as given ("MIME-
// Version", not "Mime-Version") and folded by fold.
func addFields(h *textproto.Header, fields [][2]string) {
	for i := len(fields) - 1; i >= 0; i-- {
		h.AddRaw([]byte(fold(fields[i][0]+": "+fields[i][1], foldAt) + "\r\n"))
	}
}

func writePart(mw *message.Writer, contentType, description, cte string, body []byte) error {
	var h message.Header
	addFields(&h.Header, [][2]string{
		{"Content-Type", contentType},
		{"Content-Description", description},
		{"Content-Transfer-Encoding", cte},
	})
	pw, err := mw.CreatePart(h)
	if err != nil {
		return fmt.Errorf("dsn: %w", err)
	}
	if _, err := pw.Write(body); err != nil {
		return fmt.Errorf("dsn: %w", err)
	}
	if err := pw.Close(); err != nil {
		return fmt.Errorf("dsn: %w", err)
	}
	return nil
}

// original is the third part of a report.
type original struct {
	contentType, description, cte string
	body                          []byte
	full                          bool   // the whole message
	note                          string // why the whole message was not returned
}

// returned chooses the third part: the whole message when r asks for it
// and it can be carried, else the header section.
func returned(r Report, failed bool) original {
	o := original{contentType: "text/rfc822-headers", description: "Message Headers"}
	if failed {
		o.description = "Undelivered Message Headers"
	}
	if r.ReturnFull {
		max := r.MaxReturn
		if max <= 0 {
			max = MaxReturn
		}
		if len(r.Header) > max {
			o.note = fmt.Sprintf("You asked for your message back, but it is %d bytes, more than the %d bytes "+
				"a report returns, so only its headers are attached.", len(r.Header), max)
		} else if body, why := wholeMessage(r.Header); why != "" {
			o.note = "You asked for your message back, but it " + why + ", so it cannot be returned as it is; " +
				"only its headers are attached."
		} else {
			o.contentType, o.body, o.full = "message/rfc822", body, true
			o.description = "Message"
			if failed {
				o.description = "Undelivered Message"
			}
		}
	}
	if !o.full {
		o.body = headerSection(r.Header)
	}
	o.cte = "7bit"
	switch {
	case !mailtext.Has8Bit(o.body):
	case o.full:
		o.cte = "8bit" // message/rfc822 may not be encoded (RFC 2046 5.2.1)
	default:
		// Returned headers with UTF-8 (RFC 6532) are quoted-printable, so
		// the report stays 7-bit and reaches a sender whose MX offers
		// neither 8BITMIME nor SMTPUTF8.
		o.cte = "quoted-printable"
	}
	return o
}

// wholeMessage returns msg with CRLF line endings, ready to be a
// message/rfc822 part in 7bit or 8bit, or why it cannot be: RFC 2046
// allows neither NUL, nor a CR that does not end a line, nor lines over
// 998 characters there. A bare LF becomes CRLF.
func wholeMessage(msg []byte) ([]byte, string) {
	if len(msg) == 0 {
		return nil, "is empty (it could not be read)"
	}
	if bytes.IndexByte(msg, 0) >= 0 {
		return nil, "contains NUL characters"
	}
	out := make([]byte, 0, len(msg)+len(msg)/50)
	for len(msg) > 0 {
		line := msg
		if i := bytes.IndexByte(msg, '\n'); i >= 0 {
			line, msg = msg[:i], msg[i+1:]
		} else {
			msg = nil
		}
		line = bytes.TrimSuffix(line, []byte{'\r'})
		if bytes.IndexByte(line, '\r') >= 0 {
			return nil, "contains a bare CR"
		}
		if len(line) > maxLine {
			return nil, "has a line longer than 998 characters"
		}
		out = append(out, line...)
		out = append(out, '\r', '\n')
	}
	return out, ""
}

// humanText is the text/plain part, lines wrapped at foldAt columns.
func humanText(r Report, host, note string) string {
	var b strings.Builder
	line := func(s string) { b.WriteString(wrap(s, foldAt)); b.WriteString("\r\n") }
	line("This is the mail system at host " + host + ".")
	line("")
	byAction := map[string][]Recipient{}
	for _, rc := range r.Recipients {
		byAction[rc.Action] = append(byAction[rc.Action], rc)
	}
	if rs := byAction[ActionFailed]; len(rs) > 0 {
		line("Your message could not be delivered to the following recipients. " +
			"This is a permanent error; the mail system has given up on them.")
		line("")
		for _, rc := range rs {
			line(describe(rc))
		}
		line("")
	}
	if rs := byAction[ActionDelayed]; len(rs) > 0 {
		line("Your message has not yet been delivered to the following recipients. " +
			"The mail system will keep trying; you do not need to send it again.")
		line("")
		for _, rc := range rs {
			line(describe(rc))
			if !rc.WillRetryUntil.IsZero() {
				line("    (will be retried until " + rc.WillRetryUntil.UTC().Format(time.RFC1123Z) + ")")
			}
		}
		line("")
	}
	var ok []Recipient
	for _, a := range []string{ActionDelivered, ActionExpanded} {
		ok = append(ok, byAction[a]...)
	}
	if len(ok) > 0 {
		line("Your message was delivered to the following recipients.")
		line("")
		for _, rc := range ok {
			line(describe(rc))
		}
		line("")
	}
	if rs := byAction[ActionRelayed]; len(rs) > 0 {
		line("Your message was passed on to the following recipients' next mail system. " +
			"That system does not send delivery notifications, so this is the last report " +
			"you will get about these recipients.")
		line("")
		for _, rc := range rs {
			line(describe(rc))
		}
		line("")
	}
	if r.MessageID != "" {
		line("Message ID: " + clean(r.MessageID, maxValue))
	}
	if !r.Arrival.IsZero() {
		line("Arrived:    " + r.Arrival.UTC().Format(time.RFC1123Z))
	}
	if env := clean(r.EnvelopeID, maxValue); env != "" {
		line("Envelope ID: " + env)
	}
	line("")
	if note != "" {
		line(note)
		line("")
	}
	if r.ReturnFull && note == "" {
		line("The delivery report and your message are attached.")
	} else {
		line("The delivery report and the headers of your message are attached.")
	}
	return b.String()
}

// describe is one recipient's sentence in the text part.
func describe(rc Recipient) string {
	s := "<" + clean(rc.Address, maxValue) + ">:"
	diag := diagnosticText(rc.DiagnosticCode)
	remote := clean(rc.RemoteMTA, 255)
	switch {
	case diag != "" && remote != "":
		s += " host " + remote + " said: " + diag
	case diag != "":
		s += " " + diag
	case remote != "":
		s += " (host " + remote + ")"
	default:
		s += " status " + status(rc)
	}
	return s
}

// diagnosticText strips the "smtp; " type from a diagnostic for humans.
func diagnosticText(d string) string {
	d = clean(d, maxDiagnostic)
	if t, rest, ok := strings.Cut(d, ";"); ok && isAtom(strings.TrimSpace(t)) {
		return strings.TrimSpace(rest)
	}
	return d
}

// deliveryStatus is the message/delivery-status body (RFC 3464 section 2).
func deliveryStatus(r Report, host string) []byte {
	var b bytes.Buffer
	field := func(name, value string) {
		b.WriteString(fold(name+": "+value, foldAt))
		b.WriteString("\r\n")
	}
	field("Reporting-MTA", "dns; "+host)
	if id := clean(r.MessageID, maxValue); id != "" {
		field("X-Sluice-Message-ID", id)
	}
	if env := envelopeIDField(r.EnvelopeID); env != "" {
		field("Original-Envelope-Id", env)
	}
	if !r.Arrival.IsZero() {
		field("Arrival-Date", r.Arrival.Format(time.RFC1123Z))
	}
	for _, rc := range r.Recipients {
		b.WriteString("\r\n")
		if o := originalRecipientField(rc.OriginalRecipient); o != "" {
			field("Original-Recipient", o)
		}
		a := clean(rc.Address, maxValue)
		field("Final-Recipient", addrType(a)+"; "+a)
		field("Action", rc.Action)
		field("Status", status(rc))
		if m := clean(rc.RemoteMTA, 255); m != "" {
			field("Remote-MTA", "dns; "+m)
		}
		if d := diagnostic(rc.DiagnosticCode); d != "" {
			field("Diagnostic-Code", d)
		}
		if !rc.LastAttempt.IsZero() {
			field("Last-Attempt-Date", rc.LastAttempt.Format(time.RFC1123Z))
		}
		if rc.Action == ActionDelayed && !rc.WillRetryUntil.IsZero() {
			field("Will-Retry-Until", rc.WillRetryUntil.Format(time.RFC1123Z))
		}
	}
	return b.Bytes()
}

// status returns rc.Status if well-formed, else a default for its action.
func status(rc Recipient) string {
	s := strings.TrimSpace(rc.Status)
	if statusRE.MatchString(s) {
		return s
	}
	switch rc.Action {
	case ActionFailed:
		return "5.0.0"
	case ActionDelayed:
		return "4.0.0"
	}
	return "2.0.0"
}

// diagnostic returns "type; text", sanitised, adding "smtp; " when the
// value has no type.
func diagnostic(d string) string {
	d = clean(d, maxDiagnostic)
	if d == "" {
		return ""
	}
	if t, rest, ok := strings.Cut(d, ";"); ok && isAtom(strings.TrimSpace(t)) {
		return strings.TrimSpace(t) + "; " + strings.TrimSpace(rest)
	}
	return "smtp; " + d
}

func isAtom(s string) bool {
	if s == "" || len(s) > 40 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// addrType is the RFC 3464 / RFC 6533 address type for an address.
func addrType(a string) string {
	if mailtext.IsASCII(a) {
		return "rfc822"
	}
	return "utf-8"
}

// clean makes s safe for one header-like line: invalid UTF-8 becomes "?",
// control characters (C0, DEL, C1) become spaces, runs of spaces collapse,
// and the result is cut to max bytes on a rune boundary.
func clean(s string, max int) string {
	var b strings.Builder
	b.Grow(min(len(s), max))
	space := true // drop leading spaces
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		switch {
		case r == utf8.RuneError && size == 1:
			r = '?'
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == '\u2028' || r == '\u2029':
			r = ' '
		}
		if r == ' ' {
			if space {
				continue
			}
			space = true
		} else {
			space = false
		}
		if b.Len()+utf8.RuneLen(r) > max {
			break
		}
		b.WriteRune(r)
	}
	return strings.TrimRight(b.String(), " ")
}

// fold folds a "Name: value" line at spaces so lines are at most width
// bytes where possible; a word too long for a line is split so that no
// line exceeds maxLine. Continuation lines start with a space.
func fold(s string, width int) string {
	if len(s) <= width {
		return s
	}
	var b strings.Builder
	lineLen := 0
	for i, w := range strings.Split(s, " ") {
		if i > 0 {
			if lineLen+1+len(w) > width && lineLen > 0 {
				b.WriteString("\r\n")
				lineLen = 0
			}
			b.WriteByte(' ')
			lineLen++
		}
		for lineLen+len(w) > maxLine {
			n := cutAt(w, maxLine-lineLen)
			b.WriteString(w[:n])
			b.WriteString("\r\n ")
			w = w[n:]
			lineLen = 1
		}
		b.WriteString(w)
		lineLen += len(w)
	}
	return b.String()
}

// wrap word-wraps text at width columns with plain line breaks (for the
// text part); words longer than maxLine are split.
func wrap(s string, width int) string {
	if len(s) <= width {
		return s
	}
	var b strings.Builder
	lineLen := 0
	for _, w := range strings.Fields(s) {
		if lineLen > 0 && lineLen+1+len(w) > width {
			b.WriteString("\r\n    ")
			lineLen = 4
		} else if lineLen > 0 {
			b.WriteByte(' ')
			lineLen++
		}
		for lineLen+len(w) > maxLine {
			n := cutAt(w, maxLine-lineLen)
			b.WriteString(w[:n])
			b.WriteString("\r\n    ")
			w = w[n:]
			lineLen = 4
		}
		b.WriteString(w)
		lineLen += len(w)
	}
	return b.String()
}

// cutAt returns the largest n <= max such that w[:n] ends on a rune
// boundary (at least one rune).
func cutAt(w string, max int) int {
	if max >= len(w) {
		return len(w)
	}
	n := max
	for n > 0 && !utf8.RuneStart(w[n]) {
		n--
	}
	if n == 0 {
		_, n = utf8.DecodeRuneInString(w)
	}
	return n
}

// headerSection returns the header part of msg (up to the first empty
// line) with CRLF line endings, lines cut at maxLine bytes, and no line
// that could be read as the end of the header inside the part.
func headerSection(msg []byte) []byte {
	var out bytes.Buffer
	out.Grow(len(msg))
	for len(msg) > 0 {
		var line []byte
		if i := bytes.IndexByte(msg, '\n'); i >= 0 {
			line, msg = msg[:i], msg[i+1:]
		} else {
			line, msg = msg, nil
		}
		line = bytes.TrimRight(line, "\r")
		if len(bytes.TrimSpace(line)) == 0 {
			break // end of the header section
		}
		line = bytes.ReplaceAll(line, []byte{'\r'}, []byte{' '})
		line = bytes.ReplaceAll(line, []byte{0}, []byte{' '})
		if len(line) > maxLine {
			line = line[:cutAt(string(line), maxLine)]
		}
		out.Write(line)
		out.WriteString("\r\n")
	}
	return out.Bytes()
}

// RecipientFromError makes the Recipient entry for addr from the error of
// its last delivery attempt: Action from pipeline.IsTemporary (delayed or
// failed), Status from the enhanced code, DiagnosticCode "smtp; <code>
// <enhanced> <text>" when a remote server replied (with RemoteMTA its
// host) and "x-sluice; <code> <enhanced> <text>" for failures Sluice
// decided itself (DNS, connection, policy). The caller sets the dates.
func RecipientFromError(addr string, err error) Recipient {
	rc := Recipient{Address: addr, Action: ActionFailed}
	if err == nil {
		rc.Action, rc.Status = ActionDelivered, "2.0.0"
		return rc
	}
	if pipeline.IsTemporary(err) {
		rc.Action = ActionDelayed
	}
	rep := pipeline.Reply(err)
	rc.Status = rep.Enhanced.String() // its class always matches Action
	var re *delivery.ReplyError
	if errors.As(err, &re) {
		rc.RemoteMTA = re.Remote.Host
		enh := ""
		if re.Enhanced != (pipeline.EnhancedCode{}) {
			enh = " " + re.Enhanced.String()
		}
		rc.DiagnosticCode = fmt.Sprintf("smtp; %d%s %s", re.Code, enh, re.Text)
		return rc
	}
	rc.DiagnosticCode = fmt.Sprintf("x-sluice; %d %s %s", rep.Code, rep.Enhanced, rep.Message)
	return rc
}
