// Command scorer is an example Sluice stage plugin: a content scorer. At
// on_message it adds up the scores of the rules whose pattern matches the
// Subject or the body, writes the sum into an X-Spam-Score header field and
// rejects the message when the sum reaches the threshold.
//
// Configuration (the stage's config table; every key optional):
//
//	sluice.stage("scorer", sluice.plugin {
//	  cmd = "./bin/scorer",
//	  timeout = "2s",
//	  config = {
//	    threshold = 5.0,                 -- reject at or above this score
//	    reject_code = 550,               -- SMTP code of the rejection
//	    reject_enhanced = "5.7.1",       -- its enhanced status code
//	    reject_text = "Message looks like spam",
//	    rules = { { pattern = "(?i)viagra", score = 4.0 } },  -- replace the built-in rules
//	  },
//	})
//
// Build it with `go build -o bin/scorer ./examples/plugins/scorer`.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/sluice-mta/sluice/pipeline"
	"github.com/sluice-mta/sluice/plugins/sdk"
)

// Rule adds Score when Pattern (a Go regular expression) matches.
type Rule struct {
	Pattern string  `json:"pattern"`
	Score   float64 `json:"score"`
	re      *regexp.Regexp
}

// Config is the stage's config table.
type Config struct {
	Threshold      float64 `json:"threshold"`
	RejectCode     int     `json:"reject_code"`
	RejectEnhanced string  `json:"reject_enhanced"`
	RejectText     string  `json:"reject_text"`
	Rules          []Rule  `json:"rules"`
}

var defaultRules = []Rule{
	{Pattern: `(?i)\bviagra\b`, Score: 3},
	{Pattern: `(?i)\bcasino\b`, Score: 2},
	{Pattern: `(?i)\bwire transfer\b`, Score: 1.5},
	{Pattern: `(?i)\bact now\b`, Score: 1},
	{Pattern: `[A-Z]{20,}`, Score: 1}, // shouting
}

// Scorer is the stage. It is read-only after Configure, so safe for the
// concurrent calls Sluice makes.
type Scorer struct {
	cfg Config
	enh pipeline.EnhancedCode
	log *slog.Logger
}

// Name implements pipeline.Stage.
func (s *Scorer) Name() string { return "scorer" }

// Version is logged by Sluice at start.
func (s *Scorer) Version() string { return "1.0.0" }

// Body: the scorer reads the body.
func (s *Scorer) Body() sdk.Body { return sdk.Full }

// Configure reads the config table (sdk.Configurer).
func (s *Scorer) Configure(stage string, raw json.RawMessage) error {
	c := Config{Threshold: 5, RejectCode: 550, RejectEnhanced: "5.7.1", RejectText: "Message looks like spam"}
	if err := json.Unmarshal(raw, &c); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if c.Rules == nil {
		c.Rules = defaultRules
	}
	for i := range c.Rules {
		re, err := regexp.Compile(c.Rules[i].Pattern)
		if err != nil {
			return fmt.Errorf("config: rules[%d]: %w", i+1, err)
		}
		c.Rules[i].re = re
	}
	if c.RejectCode < 500 || c.RejectCode > 599 {
		return fmt.Errorf("config: reject_code %d: want a 5xx code", c.RejectCode)
	}
	enh, err := parseEnhanced(c.RejectEnhanced)
	if err != nil || enh[0] != 5 {
		return fmt.Errorf("config: reject_enhanced %q: want a code such as 5.7.1", c.RejectEnhanced)
	}
	s.cfg, s.enh = c, enh
	s.log = slog.New(slog.NewTextHandler(os.Stderr, nil)).With("stage", stage)
	s.log.Info("configured", "threshold", c.Threshold, "rules", len(c.Rules))
	return nil
}

func parseEnhanced(s string) (pipeline.EnhancedCode, error) {
	var e pipeline.EnhancedCode
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return e, fmt.Errorf("not three numbers")
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return e, err
		}
		e[i] = n
	}
	return e, nil
}

// Score returns the sum of the matching rules' scores over subject and body.
func (s *Scorer) Score(subject string, body []byte) float64 {
	var sum float64
	for _, r := range s.cfg.Rules {
		if r.re.MatchString(subject) || r.re.Match(body) {
			sum += r.Score
		}
	}
	return sum
}

// UnparsedHeader implements sdk.HeaderReader: OnMessage reads one header
// field by name (msg.HeaderValue), so the SDK need not parse the header.
func (s *Scorer) UnparsedHeader() bool { return true }

// OnMessage implements pipeline.MessageHook.
func (s *Scorer) OnMessage(ctx context.Context, msg *pipeline.Message) (pipeline.Verdict, error) {
	score := s.Score(msg.HeaderValue("Subject"), msg.Body)
	if score >= s.cfg.Threshold {
		return pipeline.RejectVerdict(s.cfg.RejectCode, s.enh,
			fmt.Sprintf("%s (score %.1f, threshold %.1f)", s.cfg.RejectText, score, s.cfg.Threshold)), nil
	}
	var v pipeline.Verdict
	v.Edits.SetHeader("X-Spam-Score", strconv.FormatFloat(score, 'f', 1, 64))
	v.Edits.SetMeta("spam_score", strconv.FormatFloat(score, 'f', 1, 64))
	return v, nil
}

// The scorer runs its expressions over whole messages: CPU-heavy hooks,
// so it keeps Go's GOMAXPROCS (one per core) rather than the SDK's 1,
// which suits plugins that mostly wait (docs/plugins.md, "Tuning a Go
// plugin").
func main() { sdk.Serve(&Scorer{}, sdk.WithMaxProcs(0)) }
