package server

import (
	"fmt"
	"log/slog"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/tracking"
)

// trackingOptions reads sluice.tracking's key files and returns the
// tracker's options.
func trackingOptions(t *config.Tracking) (tracking.Options, error) {
	sign, err := tracking.LoadKey(t.SigningKey)
	if err != nil {
		return tracking.Options{}, fmt.Errorf("sluice.tracking: signing_key: %w", err)
	}
	var others []*tracking.Key
	for _, p := range t.VerifyKeys {
		k, err := tracking.LoadKey(p)
		if err != nil {
			return tracking.Options{}, fmt.Errorf("sluice.tracking: verify_keys: %w", err)
		}
		others = append(others, k)
	}
	kr, err := tracking.NewKeyring(sign, others...)
	if err != nil {
		return tracking.Options{}, err
	}
	policy := func(p config.TrackingPolicy) tracking.Policy {
		return tracking.Policy{BaseURL: p.BaseURL, Opens: p.Opens, Clicks: p.Clicks, Unsubscribe: p.Unsubscribe}
	}
	o := tracking.Options{Keys: kr, Default: policy(t.Default), Tenants: map[string]tracking.Policy{},
		TextLinks: t.TextLinks, MachineWindow: t.MachineWindow, EveryEvent: t.Events == "all", DedupeEntries: t.DedupeEntries}
	if t.MachineWindow == 0 {
		o.MachineWindow = -1 // "0s": off
	}
	for _, p := range t.Tenants {
		o.Tenants[p.Tenant] = policy(p)
	}
	return o, nil
}

// newTracker builds the tracker of cfg, or nil without sluice.tracking.
func newTracker(cfg *config.Config, log *slog.Logger) (*tracking.Tracker, error) {
	if !cfg.Tracking.Enabled() {
		return nil, nil
	}
	o, err := trackingOptions(cfg.Tracking)
	if err != nil {
		return nil, err
	}
	return tracking.New(o, nil, log)
}
