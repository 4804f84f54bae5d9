package pipeline

import "time"

// Event types (schema version 1).
const (
	EventReceived   = "received"
	EventRejected   = "rejected"
	EventDeferred   = "deferred"
	EventDelivered  = "delivered"
	EventBounced    = "bounced"
	EventExpired    = "expired"
	EventDiscarded  = "discarded"
	EventSuppressed = "suppressed"
	EventCancelled  = "cancelled"
	// A recipient joined or left its tenant's suppression list (a hard
	// bounce, the HTTP API or the CLI).
	EventSuppressionAdded   = "suppression_added"
	EventSuppressionRemoved = "suppression_removed"
	// A token was revoked, by id or for a whole tenant (the HTTP API or
	// the CLI); one event, on the node that revoked it.
	EventTokenRevoked = "token_revoked"
	// Outbound shaping changed for a site (and egress source): a reply
	// that means "slow down" lowered its limits or suspended it, or the
	// change ended (docs/shaping.md).
	EventShapingThrottled = "shaping_throttled"
	EventShapingSuspended = "shaping_suspended"
	EventShapingResumed   = "shaping_resumed"
	// A sending domain was registered, seen verified in DNS, lost its
	// verified status (a record signing or sending needs is missing or
	// wrong: metadata.records), or removed (the HTTP API or the CLI;
	// docs/domains.md). recipient is empty; metadata.domain names it.
	EventDomainAdded      = "domain_added"
	EventDomainVerified   = "domain_verified"
	EventDomainUnverified = "domain_unverified"
	EventDomainRemoved    = "domain_removed"
	// A registered domain's DKIM key rotation moved a step
	// (docs/rotation.md): a new key was published as pending, it became
	// the signing key (the old one retired), a retired key was revoked
	// (empty p=), a revoked key was removed. metadata.domain and
	// metadata.selector name the key.
	EventDKIMKeyPending = "dkim_key_pending"
	EventDKIMKeyActive  = "dkim_key_active"
	EventDKIMKeyRevoked = "dkim_key_revoked"
	EventDKIMKeyRemoved = "dkim_key_removed"
	// An operator paused, resumed or retried a queue or a message through
	// the admin API (docs/operating.md#queue-control); metadata.by is the
	// API key id.
	EventQueuePaused  = "queue_paused"
	EventQueueResumed = "queue_resumed"
	EventQueueRetried = "queue_retried"
	// An operator bounced, cancelled, held or released queued recipients
	// (one message, a queue or everything matching a filter);
	// metadata.by is the API key id, metadata.recipients how many. The
	// recipients' own bounced or cancelled events name the key in
	// metadata.admin_by.
	EventQueueBounced   = "queue_bounced"
	EventQueueCancelled = "queue_cancelled"
	EventQueueHeld      = "queue_held"
	EventQueueReleased  = "queue_released"

	// Engagement (docs/tracking.md): a recipient's mail client fetched
	// the open pixel, followed a tracked link, or unsubscribed (RFC 8058
	// one-click or the confirmation page). engagement carries the URL,
	// the user-agent class and whether a machine did it.
	EventOpened       = "opened"
	EventClicked      = "clicked"
	EventUnsubscribed = "unsubscribed"
	// A captured message was dropped from its tenant's sandbox inbox by
	// the retention limits (docs/sandbox.md); response.text says which.
	EventSandboxDropped = "sandbox_dropped"
	// The recipient complained about a message (marked it as spam): a
	// sandbox's simulated recipient (docs/sandbox.md). The recipient
	// joins the tenant's suppression list.
	EventComplained = "complained"
	// A TLS report (RFC 8460) another MTA sent us was received
	// (docs/tls-reporting.md#inbound-reports): metadata carries its organization,
	// report_id, policy_domains and the successful and failed session
	// counts.
	EventTLSReport = "tls_report"
)

// EventTypes lists every event type, in the order above.
var EventTypes = []string{EventReceived, EventRejected, EventDeferred, EventDelivered, EventBounced,
	EventExpired, EventDiscarded, EventSuppressed, EventCancelled, EventSuppressionAdded, EventSuppressionRemoved,
	EventTokenRevoked, EventShapingThrottled, EventShapingSuspended, EventShapingResumed,
	EventDomainAdded, EventDomainVerified, EventDomainUnverified, EventDomainRemoved,
	EventDKIMKeyPending, EventDKIMKeyActive, EventDKIMKeyRevoked, EventDKIMKeyRemoved,
	EventQueuePaused, EventQueueResumed, EventQueueRetried,
	EventQueueBounced, EventQueueCancelled, EventQueueHeld, EventQueueReleased,
	EventOpened, EventClicked, EventUnsubscribed,
	EventSandboxDropped, EventComplained, EventTLSReport}

// EventSchema is the version in every event's "schema" field.
const EventSchema = 1

// Response is an SMTP reply as recorded in an event.
type Response struct {
	Code     int    `json:"code"`
	Enhanced string `json:"enhanced"`
	Text     string `json:"text"`
}

// Remote is the host a delivery attempt talked to.
type Remote struct {
	Host string `json:"host"`
	IP   string `json:"ip"`
	TLS  string `json:"tls"`
	// TLSCipher is the negotiated cipher suite (crypto/tls name), "" in
	// clear text.
	TLSCipher string `json:"tls_cipher,omitempty"`
	// TLSPolicy is the TLS policy that applied to the attempt: "none",
	// "opportunistic", "required", "verify", "mta-sts" (an MTA-STS
	// policy in enforce mode, RFC 8461) or "dane" (DNSSEC-authenticated
	// TLSA records, RFC 7672).
	TLSPolicy string `json:"tls_policy,omitempty"`
	// TLSValidated is true when the server's certificate was verified
	// for Host against the trusted roots (whether or not the policy
	// required it).
	TLSValidated bool `json:"tls_validated,omitempty"`
	// MTASTSFailure, for a recipient domain whose MTA-STS policy is in
	// testing mode, says why the delivery would have been refused under
	// enforce (RFC 8461 section 5); "" when it would not.
	MTASTSFailure string `json:"mta_sts_failure,omitempty"`
	// TLSFailure is the RFC 8460 section 4.3 result type of a TLS policy
	// check that failed on this attempt ("starttls-not-supported",
	// "certificate-host-mismatch", "certificate-not-trusted",
	// "certificate-expired", "validation-failure", "tlsa-invalid",
	// "dnssec-invalid", "dane-required", "sts-policy-invalid",
	// "sts-webpki-invalid", ...): set on the deferral an enforced DANE,
	// MTA-STS, verify or required policy caused, and on a delivery an
	// MTA-STS policy in testing mode would have refused; "" otherwise.
	TLSFailure string `json:"tls_failure,omitempty"`
}

// Event is one state change of one recipient. Its JSON form is the public
// event schema: field names and meanings never change within a schema
// version; new fields may be added.
type Event struct {
	Schema      int               `json:"schema"`
	EventID     string            `json:"event_id"`
	Type        string            `json:"type"`
	Time        time.Time         `json:"time"`
	MessageID   string            `json:"message_id"`
	Recipient   string            `json:"recipient"`
	Sender      string            `json:"sender"`
	Source      string            `json:"source"`
	Tenant      string            `json:"tenant"`
	Queue       string            `json:"queue"`
	Attempt     int               `json:"attempt"`
	Response    *Response         `json:"response,omitempty"`
	Remote      *Remote           `json:"remote,omitempty"`
	BounceClass string            `json:"bounce_class"`
	Tags        []string          `json:"tags"`
	Metadata    map[string]string `json:"metadata"`
	Size        int               `json:"size"`
	Node        string            `json:"node"`
	// RequireTLS is true for a message sent with REQUIRETLS (RFC 8689):
	// it is delivered only over TLS that a policy validated, to a next
	// hop that offers REQUIRETLS, or bounced (docs/delivery.md).
	RequireTLS bool `json:"require_tls,omitempty"`
	// Engagement is set on opened, clicked and unsubscribed events only.
	Engagement *Engagement `json:"engagement,omitempty"`
}

// User-agent classes of an engagement event (Engagement.UserAgent).
const (
	AgentBrowser = "browser" // a person's browser or mail client
	AgentProxy   = "proxy"   // an image proxy that fetches for the reader (Gmail, Apple Mail Privacy Protection)
	AgentScanner = "scanner" // a link scanner or security gateway
	AgentBot     = "bot"     // another automated client (curl, a crawler)
	AgentUnknown = "unknown" // no User-Agent
)

// Engagement is what an opened, clicked or unsubscribed event records
// of the request that caused it. The client's address and full
// User-Agent string are not recorded (docs/tracking.md, privacy).
type Engagement struct {
	// URL is the original link of a clicked event ("" otherwise).
	URL string `json:"url,omitempty"`
	// UserAgent is the client's class: AgentBrowser, AgentProxy,
	// AgentScanner, AgentBot or AgentUnknown.
	UserAgent string `json:"user_agent"`
	// Machine is true when the request looks automated (a privacy proxy
	// that fetches every image, a scanner that clicks every link);
	// MachineReason says why: "proxy_user_agent", "scanner_user_agent",
	// "bot_user_agent", "head_request", "too_soon" (within the tenant's
	// machine_window of the message's acceptance), "no_user_agent".
	Machine       bool   `json:"machine"`
	MachineReason string `json:"machine_reason,omitempty"`
	// Method is "one-click" (RFC 8058 POST) or "page" (the confirmation
	// page) for an unsubscribed event.
	Method string `json:"method,omitempty"`
}

// ResponseOf converts an error into the Response recorded in an event.
func ResponseOf(err error) *Response {
	if err == nil {
		return nil
	}
	r := Reply(err)
	return &Response{Code: r.Code, Enhanced: r.Enhanced.String(), Text: r.Message}
}
