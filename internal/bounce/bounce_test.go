package bounce

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluice-mta/sluice/pipeline"
)

type reply struct {
	provider string
	code     int
	enhanced string
	text     string
	want     string
}

// replies are real-world replies (addresses, IPs and ids replaced) as
// providers document them or as they appear in bounces, and Sluice's own
// delivery errors.
var replies = []reply{
	// Gmail
	{"gmail", 550, "5.1.1", "The email account that you tried to reach does not exist. Please try\r\ndouble-checking the recipient's email address for typos or\r\nunnecessary spaces. For more information, go to\r\nhttps://support.google.com/mail/?p=NoSuchUser a1si123456qkb.7 - gsmtp", InvalidRecipient},
	{"gmail", 552, "5.2.2", "The recipient's inbox is out of storage space. Please direct the\r\nrecipient to\r\nhttps://support.google.com/mail/?p=OverQuotaPerm d2si1 - gsmtp", QuotaIssues},
	{"gmail", 452, "4.2.2", "The email account that you tried to reach is over quota. Please direct\r\nthe recipient to https://support.google.com/mail/?p=OverQuotaTemp x1 - gsmtp", QuotaIssues},
	{"gmail", 550, "5.2.1", "The email account that you tried to reach is disabled. Learn more at\r\nhttps://support.google.com/mail/?p=DisabledUser z2 - gsmtp", InactiveMailbox},
	{"gmail", 450, "4.2.1", "The user you are trying to contact is receiving mail at a rate that\r\nprevents additional messages from being delivered. Please resend your\r\nmessage at a later time. https://support.google.com/mail/?p=ReceivingRate - gsmtp", TransientFailure},
	{"gmail", 550, "5.7.1", "Our system has detected an unusual rate of unsolicited mail originating\r\nfrom your IP address. To protect our users from spam, mail sent from your\r\nIP address has been blocked. https://support.google.com/mail/?p=UnsolicitedIPError - gsmtp", SpamBlock},
	{"gmail", 421, "4.7.0", "This message is suspicious due to the very low reputation of the sending\r\nIP address. To protect our users from spam, mail sent from your IP address\r\nhas been temporarily rate limited. https://support.google.com/mail/answer/188131 - gsmtp", SpamBlock},
	{"gmail", 550, "5.7.1", "This message is likely unsolicited mail. To reduce the amount of spam sent\r\nto Gmail, this message has been blocked. https://support.google.com/mail/?p=UnsolicitedMessageError - gsmtp", SpamContent},
	{"gmail", 550, "5.7.26", "This mail has been blocked because the sender is unauthenticated. Gmail\r\nrequires all senders to authenticate with either SPF or DKIM. - gsmtp", AuthenticationFailed},
	{"gmail", 550, "5.7.26", "Unauthenticated email from example.com is not accepted due to domain's\r\nDMARC policy. Please contact the administrator of example.com domain. - gsmtp", AuthenticationFailed},
	{"gmail", 550, "5.7.25", "The IP address sending this message does not have a PTR record setup, or\r\nthe corresponding forward DNS entry does not point to the sending IP. - gsmtp", AuthenticationFailed},
	{"gmail", 552, "5.7.0", "This message was blocked because its content presents a potential\r\nsecurity issue. https://support.google.com/mail/?p=BlockedMessage - gsmtp", VirusRelated},
	{"gmail", 452, "4.5.3", "Your message has too many recipients. For more information regarding\r\nGoogle's sending limits, visit https://support.google.com/mail/?p=TooManyRecipientsError - gsmtp", TooManyRecipients},
	{"gmail", 550, "5.7.1", "[192.0.2.1] The user or domain that you are sending to (or from) has a\r\npolicy that prohibited the mail that you sent. - gsmtp", PolicyRelated},
	{"gmail", 421, "4.3.0", "Temporary System Problem.  Try again later (10). - gsmtp", TransientFailure},
	// Outlook.com and Microsoft 365
	{"outlook", 550, "5.5.0", "Requested action not taken: mailbox unavailable (S2017062302). [BN1NAM02FT012.eop-nam02.prod.protection.outlook.com]", InvalidRecipient},
	{"m365", 550, "5.1.10", "RESOLVER.ADR.RecipientNotFound; Recipient user@example.com not found by SMTP address lookup", InvalidRecipient},
	{"m365", 550, "5.4.1", "Recipient address rejected: Access denied. AS(201806281) [DM6NAM10FT012.eop-nam10.prod.protection.outlook.com]", InvalidRecipient},
	{"outlook", 550, "5.7.1", "Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150). You can also refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors.", SpamBlock},
	{"m365", 550, "5.7.606", "Access denied, banned sending IP [192.0.2.1]. To request removal from this list please visit https://sender.office.com/ and follow the directions.", SpamBlock},
	{"m365", 550, "5.7.509", "Access denied, sending domain example.com does not pass DMARC verification and has a DMARC policy of reject.", AuthenticationFailed},
	{"m365", 554, "5.2.2", "mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded", QuotaIssues},
	{"outlook", 451, "4.7.500", "Server busy. Please try again later from [192.0.2.1]. (S77714) [AM4PEPF00027A5F.eurprd04.prod.outlook.com]", TransientFailure},
	{"m365", 550, "5.7.54", "SMTP; Unable to relay recipient in non-accepted domain", RelayDenied},
	{"m365", 554, "5.4.14", "Hop count exceeded - possible mail loop ATTR34 [DB5EUR03FT012.eop-EUR03.prod.protection.outlook.com]", RoutingErrors},
	{"m365", 550, "5.7.133", "RESOLVER.RST.SenderNotAuthenticatedForGroup; authentication required; Delivery restriction check failed as sender not authenticated", PolicyRelated},
	// Yahoo and AOL
	{"yahoo", 554, "", "delivery error: dd This user doesn't have a yahoo.com account (user@yahoo.com) [0] - mta1234.mail.gq1.yahoo.com", InvalidRecipient},
	{"yahoo", 552, "", "1 Requested mail action aborted, mailbox not found", InvalidRecipient},
	{"yahoo", 554, "", "delivery error: dd Sorry your message to user@yahoo.com cannot be delivered. This mailbox is disabled (554.30). - mta1234.mail.bf1.yahoo.com", InactiveMailbox},
	{"yahoo", 421, "4.7.0", "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes", SpamBlock},
	{"yahoo", 553, "5.7.1", "[BL21] Connections will not be accepted from 192.0.2.1, because the ip is in Spamhaus's list; see https://postmaster.yahooinc.com/error-codes", SpamBlock},
	{"yahoo", 554, "5.7.9", "Message not accepted for policy reasons.  See https://postmaster.yahooinc.com/error-codes", PolicyRelated},
	{"yahoo", 550, "5.7.9", "This mail has been blocked because the sender is unauthenticated. Yahoo requires all senders to authenticate with either SPF or DKIM.", AuthenticationFailed},
	{"aol", 421, "4.7.0", "[TS01] Messages from 192.0.2.1 temporarily deferred due to user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes", SpamBlock},
	// Apple iCloud
	{"icloud", 550, "5.1.1", "<user@icloud.com>: user does not exist", InvalidRecipient},
	{"icloud", 552, "5.2.2", "<user@icloud.com>: user is over quota", QuotaIssues},
	{"icloud", 554, "5.7.1", "[CS01] Message rejected due to local policy. Please visit https://support.apple.com/en-us/HT204137", PolicyRelated},
	{"icloud", 421, "4.7.0", "[HM08] Message rejected due to local policy. Please visit https://support.apple.com/en-us/HT204137", SpamBlock},
	// GMX and Web.de
	{"gmx", 550, "", "Requested action not taken: mailbox unavailable", InvalidRecipient},
	{"gmx", 554, "", "gmx.net (mxgmx017) Nemesis ESMTP Service not available\r\nNo SMTP service\r\nIP address is block listed.\r\nFor explanation visit https://www.gmx.net/mail/senderguidelines?c=bl", SpamBlock},
	{"gmx", 550, "", "Requested action not taken: mailbox unavailable\r\ninvalid DNS PTR resource record, IP=192.0.2.1", AuthenticationFailed},
	{"web.de", 552, "", "Requested mail action aborted: exceeded storage allocation", QuotaIssues},
	{"web.de", 554, "", "Transaction failed\r\nReject due to policy restrictions.\r\nFor explanation visit https://web.de/email/senderguidelines?ip=192.0.2.1&c=hi", PolicyRelated},
	// Mail.ru
	{"mail.ru", 550, "", "Message was not accepted -- invalid mailbox.  Local mailbox user@mail.ru is unavailable: user not found", InvalidRecipient},
	{"mail.ru", 550, "", "Message was not accepted -- invalid mailbox.  Local mailbox user@mail.ru is unavailable: account is disabled", InactiveMailbox},
	{"mail.ru", 550, "", "spam message rejected. Please visit http://help.mail.ru/notspam-support/id?c=abc or report details to abuse@corp.mail.ru. Error code: 1A2B3C.", SpamContent},
	{"mail.ru", 421, "", "Too many messages from your IP. Please try again later.", TransientFailure},
	// Yandex
	{"yandex", 550, "5.7.1", "No such user!", InvalidRecipient},
	{"yandex", 554, "5.7.1", "[2] Message rejected under suspicion of SPAM; https://ya.cc/1IrBc 1700000000-AbCdEf", SpamContent},
	{"yandex", 552, "5.2.2", "Mailbox size limit exceeded", QuotaIssues},
	{"yandex", 550, "5.7.1", "Policy rejection on Target Address", PolicyRelated},
	// Comcast
	{"comcast", 550, "5.1.1", "<user@comcast.net> Not our Customer", InvalidRecipient},
	{"comcast", 554, "5.7.1", "resimta-ch2-01v.sys.comcast.net resimta-ch2-01v.sys.comcast.net 192.0.2.1 found on one or more DNSBLs, see http://postmaster.comcast.net/smtp-error-codes.php#BL000001", SpamBlock},
	{"comcast", 421, "4.1.0", "192.0.2.1 Throttled - try again later. Please see http://postmaster.comcast.net/smtp-error-codes.php#RL000001", TransientFailure},
	{"comcast", 554, "5.7.1", "Comcast requires that all mail servers must have a PTR record with a valid Reverse DNS entry. Currently your mail server does not fill that requirement.", AuthenticationFailed},
	// Proofpoint and Mimecast gateways
	{"proofpoint", 554, "5.7.0", "Blocked - see https://ipcheck.proofpoint.com/?ip=192.0.2.1", SpamBlock},
	{"proofpoint", 550, "5.7.1", "Message blocked due to spam content in the message.", SpamContent},
	{"mimecast", 550, "", "Invalid Recipient - https://community.mimecast.com/docs/DOC-1369#550 [AbCdEf.us123]", InvalidRecipient},
	{"mimecast", 550, "", "Rejected by header based Anti-Spoofing policy: user@example.com - https://community.mimecast.com/docs/DOC-1369#550", AuthenticationFailed},
	{"mimecast", 554, "", "Email rejected due to security policies - https://community.mimecast.com/docs/DOC-1369#554", PolicyRelated},
	// Postfix, Exim and other common servers
	{"postfix", 550, "5.1.1", "<user@example.com>: Recipient address rejected: User unknown in virtual mailbox table", InvalidRecipient},
	{"postfix", 554, "5.7.1", "<user@example.org>: Relay access denied", RelayDenied},
	{"postfix", 554, "5.7.1", "Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/192.0.2.1", SpamBlock},
	{"postfix", 450, "4.2.0", "<user@example.com>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/example.com.html", TransientFailure},
	{"postfix", 450, "4.7.1", "Client host rejected: cannot find your reverse hostname, [192.0.2.1]", AuthenticationFailed},
	{"exim", 550, "", "Administrative prohibition", PolicyRelated},
	{"generic", 552, "5.3.4", "Message size exceeds fixed maximum message size", QuotaIssues},
	{"generic", 554, "5.7.1", "Message rejected, virus detected: Win.Trojan.Agent", VirusRelated},
	{"generic", 552, "5.7.0", "Message contains a banned attachment type", ProhibitedAttachment},
	// RFC 3463 codes with uninformative text
	{"rfc3463", 550, "5.1.1", "Mailbox unavailable", InvalidRecipient},
	{"rfc3463", 550, "5.1.2", "Bad destination system address", BadDomain},
	{"rfc3463", 553, "5.1.7", "Bad sender address syntax", InvalidSender},
	{"rfc3463", 550, "5.1.6", "Moved", InactiveMailbox},
	{"rfc3463", 452, "4.3.1", "Insufficient resources", QuotaIssues},
	{"rfc3463", 554, "5.4.7", "Delivery time expired", MessageExpired},
	{"rfc3463", 501, "5.5.4", "Invalid command arguments", ProtocolErrors},
	{"rfc3463", 550, "5.7.23", "Fail", AuthenticationFailed},
	{"rfc3463", 550, "5.7.28", "Flood", SpamBlock},
	{"rfc3463", 554, "5.6.3", "Conversion required but not supported", ContentRelated},
	{"rfc3463", 421, "", "Service not available, closing transmission channel", TransientFailure},
	{"rfc3463", 550, "", "Requested action not taken", Uncategorized},
	{"rfc3463", 554, "5.0.0", "Error", Uncategorized},
	// Sluice's own delivery errors (internal/delivery)
	{"sluice", 451, "4.4.3", "DNS lookup failed", DNSFailure},
	{"sluice", 556, "5.1.10", "Recipient address has null MX (RFC 7505)", BadDomain},
	{"sluice", 550, "5.4.4", "nowhere.example has no MX or address records", BadDomain},
	{"sluice", 550, "5.4.4", "MX host mx.nowhere.example has no address", RoutingErrors},
	{"sluice", 451, "4.4.1", "connection refused by 192.0.2.1:25", NoAnswerFromHost},
	{"sluice", 451, "4.4.2", "connection lost", BadConnection},
	{"sluice", 554, "5.4.6", "MX of example.com points back to this host (mail loop)", RoutingErrors},
	{"sluice", 451, "4.7.10", "TLS required", PolicyRelated},
}

func TestClassifyRealReplies(t *testing.T) {
	if len(replies) < 40 {
		t.Fatalf("only %d replies", len(replies))
	}
	providers := map[string]bool{}
	c := Default()
	for _, r := range replies {
		providers[r.provider] = true
		name := r.provider + "/" + strings.ReplaceAll(Line(r.code, r.enhanced, r.text), "/", "_")
		if len(name) > 70 {
			name = name[:70]
		}
		t.Run(name, func(t *testing.T) {
			if got := c.Classify(r.code, r.enhanced, r.text); got != r.want {
				t.Errorf("Classify(%q) = %s, want %s", Line(r.code, r.enhanced, r.text), got, r.want)
			}
		})
	}
	if len(providers) < 8 {
		t.Errorf("only %d providers", len(providers))
	}
}

// TestPrefilterAgrees checks, over the table and non-ASCII variants, that
// the literal prefilter never changes a result: every rule's regexp run on
// every line gives the same first match as Classify.
func TestPrefilterAgrees(t *testing.T) {
	c := Default()
	lines := []reply{}
	for _, r := range replies {
		lines = append(lines, r,
			reply{code: r.code, enhanced: r.enhanced, text: strings.ToUpper(r.text)},
			reply{code: r.code, enhanced: r.enhanced, text: "Почтовый ящик " + r.text})
	}
	for _, r := range lines {
		line := []byte(Line(r.code, r.enhanced, r.text))
		want := Uncategorized
		for _, cr := range c.rules {
			if cr.re.Match(line) {
				want = cr.Class
				break
			}
		}
		if got := c.Classify(r.code, r.enhanced, r.text); got != want {
			t.Errorf("%q: Classify = %s, plain regexps = %s", line, got, want)
		}
	}
}

func TestRequiredLiterals(t *testing.T) {
	for pat, want := range map[string]string{
		`^550 5\.1\.1 `:                               "550 5.1.1 ",
		`(?i)\bover ?quota\b`:                         "over & quota",
		`(?i)RESOLVER\.ADR\.Recip(ient)?NotFound`:     "resolver.adr.recip & notfound",
		`(foo|bar)`:                                   "foo|bar",
		`(?i)(Virus|malware)\b.*\b(detected|found)\b`: "virus|malware & detected|found",
		`(fo|bar)`:                                    "",
		`a`:                                           "",
		`[45]\.7\.1`:                                  ".7.1",
		`(?i)too many (messages|connections)`:         "too many  & messages|connections",
		`x*hello world`:                               "hello world",
		`(hello)?world`:                               "world",
		`(hello)*`:                                    "",
		`почта`:                                       "",
		`(?i)(mailbox|mail ?box) (is )?full`:          "mail & box|box & full",
	} {
		var got []string
		for _, g := range requiredLiterals(pat) {
			var or []string
			for _, l := range g {
				or = append(or, string(l))
			}
			got = append(got, strings.Join(or, "|"))
		}
		if strings.Join(got, " & ") != want {
			t.Errorf("requiredLiterals(%q) = %q, want %q", pat, strings.Join(got, " & "), want)
		}
	}
}

func TestLine(t *testing.T) {
	for _, tc := range []struct {
		code           int
		enhanced, text string
		want           string
	}{
		{550, "5.1.1", "no such user", "550 5.1.1 no such user"},
		{421, "", "busy", "421 busy"},
		{550, "5.1.1", "line one\r\nline two\nthree\rfour", "550 5.1.1 line one line two three four"},
	} {
		if got := Line(tc.code, tc.enhanced, tc.text); got != tc.want {
			t.Errorf("Line = %q, want %q", got, tc.want)
		}
	}
}

func TestKumoFormatFileLoads(t *testing.T) {
	c, err := Load([]string{"testdata/kumo.toml"}, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		code           int
		enhanced, text string
		want           string
	}{
		{550, "5.1.1", "whatever", InvalidRecipient},
		{550, "5.1.10", "null", BadDomain},
		{552, "5.2.2", "full", QuotaIssues},
		// The operator's file is read first: its override wins over the
		// default rules (which make a 5.7.1 Spamhaus listing SpamBlock).
		{554, "5.7.1", "Client host [192.0.2.1] blacklisted by zen.spamhaus.org", TransientFailure},
		{550, "", "ACME Corp does not want your mail", "CustomerBlock"},
		// Falls through to the defaults.
		{550, "5.7.26", "Unauthenticated email from example.com is not accepted due to DMARC", AuthenticationFailed},
	} {
		if got := c.Classify(tc.code, tc.enhanced, tc.text); got != tc.want {
			t.Errorf("Classify(%d %s %s) = %s, want %s", tc.code, tc.enhanced, tc.text, got, tc.want)
		}
	}
	// File order and class order decide, as in KumoMTA.
	f, err := ParseFile("testdata/kumo.toml")
	if err != nil {
		t.Fatal(err)
	}
	var classes []string
	for _, r := range f.Rules {
		if len(classes) == 0 || classes[len(classes)-1] != r.Class {
			classes = append(classes, r.Class)
		}
	}
	if got := strings.Join(classes, ","); got != "InvalidRecipient,BadDomain,QuotaIssues,TransientFailure,CustomerBlock" {
		t.Errorf("class order %s", got)
	}
}

func TestRuleOrder(t *testing.T) {
	f1, err := Parse("one", []byte("[rules]\nfoo = [\"woot\", \"aaa\"]\nbar = [\"woot\", \"aaa\", \"bbb\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	f2, err := Parse("two", []byte("[rules]\nsecond = [\"bbb\", \"ccc\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := Compile(f1, f2)
	if err != nil {
		t.Fatal(err)
	}
	for in, want := range map[string]string{"woot": "foo", "aaa": "foo", "bbb": "bar", "ccc": "second", "zzz": Uncategorized} {
		if got := c.Classify(550, "", in); got != want {
			t.Errorf("%s: got %s, want %s", in, got, want)
		}
	}
}

func TestBadRegexReportsFileAndClass(t *testing.T) {
	_, err := Load([]string{"testdata/bad.toml"}, false)
	if err == nil {
		t.Fatal("no error for a look-behind")
	}
	msg := err.Error()
	for _, want := range []string{"testdata/bad.toml", "class SpamBlock", "rule 2", "(?<=blocked) by"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	dir := t.TempDir()
	for name, src := range map[string]string{
		"syntax.toml":  "[rules\nX = [\"a\"]\n",
		"notlist.toml": "[rules]\nX = \"a\"\n",
		"norules.toml": "# nothing\n",
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := ParseFile(p); err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %v does not name the file", name, err)
		}
	}
	if _, err := ParseFile("testdata/shaping.toml"); err == nil || !strings.Contains(err.Error(), "unknown key") {
		t.Errorf("a shaping file loaded as bounce rules: %v", err)
	}
	if _, err := ParseFile(filepath.Join(dir, "missing.toml")); err == nil || !strings.Contains(err.Error(), "missing.toml") {
		t.Errorf("missing file: %v", err)
	}
}

func TestMetrics(t *testing.T) {
	c, err := Load(nil, true)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	if err := c.Register(reg); err != nil {
		t.Fatal(err)
	}
	c.Classify(550, "5.1.1", "no such user")
	c.Classify(550, "5.1.1", "no such user")
	c.Classify(550, "", "something else")
	c.ClassifyResponse(&pipeline.Response{Code: 452, Enhanced: "4.2.2", Text: "over quota"})
	c.ClassifyResponse(nil)
	for class, want := range map[string]float64{InvalidRecipient: 2, Uncategorized: 2, QuotaIssues: 1, SpamBlock: 0} {
		got := testutil.ToFloat64(c.counts[c.classIndex(t, class)])
		if got != want {
			t.Errorf("sluice_bounce_classified_total{class=%q} = %v, want %v", class, got, want)
		}
	}
	// Every class is exported from the start, and nothing else.
	if n := testutil.CollectAndCount(reg, "sluice_bounce_classified_total"); n != len(c.classes) {
		t.Errorf("%d series, want %d", n, len(c.classes))
	}
	var hits uint64
	for _, h := range c.Hits() {
		hits += h.Hits
	}
	if hits != 3 {
		t.Errorf("rule hits %d, want 3", hits)
	}
	// Per rule: one series per loaded rule, their sum the hits above.
	if n := testutil.CollectAndCount(reg, "sluice_bounce_rule_hits_total"); n != len(c.rules) {
		t.Errorf("%d rule series, want %d", n, len(c.rules))
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range fams {
		if f.GetName() == "sluice_bounce_rule_hits_total" {
			for _, m := range f.Metric {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	if sum != 3 {
		t.Errorf("sluice_bounce_rule_hits_total sums to %v, want 3", sum)
	}
	if err := c.Register(reg); err == nil {
		t.Error("registering twice in one registry succeeded")
	}
}

func (c *Classifier) classIndex(t *testing.T, name string) int {
	for i, n := range c.classes {
		if n == name {
			return i
		}
	}
	t.Fatalf("no class %s", name)
	return 0
}

func TestDefaultRulesUsePredefinedClasses(t *testing.T) {
	known := map[string]bool{}
	for _, c := range Classes {
		known[c] = true
	}
	for _, f := range DefaultRules() {
		for _, r := range f.Rules {
			if !known[r.Class] {
				t.Errorf("%s: class %s is not predefined", f.Name, r.Class)
			}
		}
	}
}

func TestClassifyExpired(t *testing.T) {
	c := Default()
	for _, tc := range []struct {
		last *pipeline.Response
		want string
	}{
		{&pipeline.Response{Code: 452, Enhanced: "4.2.2", Text: "The email account that you tried to reach is over quota."}, QuotaIssues},
		{&pipeline.Response{Code: 451, Enhanced: "4.4.3", Text: "DNS lookup failed"}, DNSFailure},
		{&pipeline.Response{Code: 451, Enhanced: "4.4.1", Text: "connection refused"}, NoAnswerFromHost},
		{&pipeline.Response{Code: 450, Enhanced: "4.2.0", Text: "Greylisted, try again later"}, MessageExpired},
		{&pipeline.Response{Code: 421, Text: "closing"}, MessageExpired},
		{nil, MessageExpired},
	} {
		if got := c.ClassifyExpired(tc.last); got != tc.want {
			t.Errorf("ClassifyExpired(%+v) = %s, want %s", tc.last, got, tc.want)
		}
	}
}

// TestClassifyConcurrent: one classifier shared by goroutines (pooled
// scratch buffers, atomic hit counts, metrics) gives each the same answers.
func TestClassifyConcurrent(t *testing.T) {
	c, err := Load(nil, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Register(prometheus.NewRegistry()); err != nil {
		t.Fatal(err)
	}
	errs := make(chan string, 4*len(replies))
	done := make(chan struct{})
	for g := 0; g < 4; g++ {
		go func(g int) {
			defer func() { done <- struct{}{} }()
			for i := range replies {
				r := replies[(i+g*7)%len(replies)]
				if got := c.Classify(r.code, r.enhanced, r.text); got != r.want {
					errs <- r.provider + ": " + got + " != " + r.want
				}
			}
		}(g)
	}
	for g := 0; g < 4; g++ {
		<-done
	}
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	var hits uint64
	for _, h := range c.Hits() {
		hits += h.Hits
	}
	unc := 0
	for _, r := range replies {
		if r.want == Uncategorized {
			unc++
		}
	}
	if want := uint64(4 * (len(replies) - unc)); hits != want {
		t.Errorf("rule hits %d, want %d", hits, want)
	}
}

func TestLoweredOnlyWhenCaseBlind(t *testing.T) {
	lines := []string{"550 5.1.1 No Such User", "550 5.1.1 no such user", "550 5.1.1 NO SUCH USER", "452 4.2.2 Mailbox FULL", "x_y Z"}
	for pat, blind := range map[string]bool{
		`(?i)no such user`:       true,
		`(?i)\bmailbox\s+full\b`: true,
		`(?i)[a-z]+ [A-Z]`:       true,
		`^550 5\.1\.1 `:          true,
		`no such user`:           false,
		`(?i)no (?-i:Such) user`: false,
		`[A-Z]+`:                 false,
		`[^a-z]`:                 false,
		`(?i)[^a-z]`:             true,
		`(?i)straße`:             false,
	} {
		l := lowered(pat)
		if (l != nil) != blind {
			t.Errorf("lowered(%q) = %v, want case-blind %v", pat, l, blind)
			continue
		}
		if l == nil {
			continue
		}
		re := regexp.MustCompile(pat)
		for _, line := range lines {
			low, _ := appendLower(nil, []byte(line))
			if re.MatchString(line) != l.Match(low) {
				t.Errorf("%q on %q: original %v, lowered %v", pat, line, re.MatchString(line), l.Match(low))
			}
		}
	}
}
