package server

import (
	"log/slog"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/relay"
	"github.com/sluice-mta/sluice/pipeline"
)

// BuildTracedPipeline is BuildPipeline with trace observing every stage
// hook call (pipeline.ChainOptions.Trace): the pipeline `sluice test`
// runs a message through. The stages are the ones serve would build (Lua
// scripts, built-ins, plugin processes), so a dry run exercises them for
// real. trace is called on the goroutine of the call.
func BuildTracedPipeline(cfg *config.Config, log *slog.Logger, res dnsx.Resolver, trace func(pipeline.TraceCall)) (*relay.Pipeline, error) {
	rds, err := NewRedis(cfg)
	if err != nil {
		return nil, err
	}
	return buildPipeline(cfg, log, res, shared{redis: rds, ownRedis: true, trace: trace})
}

// Resolver returns the DNS client serve would use for cfg
// (sluice.delivery's resolver, else the system's).
func Resolver(cfg *config.Config) (*dnsx.Client, error) { return resolver(cfg) }
