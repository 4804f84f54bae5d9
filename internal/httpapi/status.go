package httpapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/internal/apikey"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// ---- GET /v1/messages/{id} ----

// rcptState is one recipient's current state in a status answer.
type rcptState struct {
	Email    string             `json:"email"`
	State    string             `json:"state"`
	Queue    string             `json:"queue,omitempty"`
	Attempts int                `json:"attempts"`
	Updated  time.Time          `json:"updated"`
	Response *pipeline.Response `json:"response,omitempty"`
	// NextAttempt is set while the recipient is queued or deferred.
	NextAttempt *time.Time `json:"next_attempt,omitempty"`
}

type statusAnswer struct {
	ID         string            `json:"id"`
	Sender     string            `json:"sender"`
	Tenant     string            `json:"tenant"`
	Source     string            `json:"source"`
	Tags       []string          `json:"tags"`
	Metadata   map[string]string `json:"metadata"`
	Received   time.Time         `json:"received"`
	Size       int               `json:"size"`
	Recipients []rcptState       `json:"recipients"`
	Events     []pipeline.Event  `json:"events"`
}

const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

func validULID(id string) bool {
	if len(id) != 26 || id[0] > '7' {
		return false
	}
	for i := 0; i < len(id); i++ {
		if strings.IndexByte(crockford, id[i]) < 0 {
			return false
		}
	}
	return true
}

// nextAttempt is when a live (queued or deferred) recipient is due: its
// stored next attempt, or its message's receipt if it was never tried. A
// time in the past means due and waiting for a delivery slot. Final
// recipients have none.
func nextAttempt(state string, t, received time.Time) *time.Time {
	if state != spool.StateQueued && state != spool.StateDeferred {
		return nil
	}
	if t.IsZero() {
		t = received
	}
	t = t.UTC()
	return &t
}

func (s *Server) getMessage(w http.ResponseWriter, r *http.Request, id string) {
	k, e := s.authenticate(r, apikey.ScopeSend, apikey.ScopeAdmin)
	if e != nil {
		s.fail(w, e)
		return
	}
	id = strings.ToUpper(id)
	if !validULID(id) {
		s.fail(w, errNotFound)
		return
	}
	st, err := s.sp.Status(id)
	if errors.Is(err, spool.ErrNotFound) {
		s.fail(w, errNotFound)
		return
	}
	if err != nil {
		s.log.Error("cannot read message status", "msgid", id, "err", err)
		s.fail(w, errf(http.StatusServiceUnavailable, codeUnavailable, "", "cannot read the message status now, try again later"))
		return
	}
	// An admin key sees every message (SMTP mail has no tenant); a send
	// key only its tenant's: another tenant's message does not exist.
	if !k.HasScope(apikey.ScopeAdmin) && st.Tenant != k.Tenant {
		s.fail(w, errNotFound)
		return
	}
	a := statusAnswer{ID: st.ID, Sender: st.Sender, Tenant: st.Tenant, Source: st.Source, Tags: st.Tags,
		Metadata: st.Metadata, Received: st.Received.UTC(), Size: st.Size, Recipients: []rcptState{}, Events: st.Events}
	if a.Tags == nil {
		a.Tags = []string{}
	}
	if a.Metadata == nil {
		a.Metadata = map[string]string{}
	}
	if a.Events == nil {
		a.Events = []pipeline.Event{}
	}
	for _, rs := range st.Recipients {
		a.Recipients = append(a.Recipients, rcptState{Email: rs.Address, State: rs.State, Queue: rs.Queue,
			Attempts: rs.Attempts, Updated: rs.Updated.UTC(), Response: rs.LastResponse,
			NextAttempt: nextAttempt(rs.State, rs.NextAttempt, st.Received)})
	}
	b, err := json.Marshal(a)
	if err != nil {
		s.fail(w, errInternal)
		return
	}
	s.writeAnswer(w, answer{status: http.StatusOK, body: b})
}
