// Package plugin is the host side of Sluice stage plugins: it starts a
// plugin binary with hashicorp/go-plugin (gRPC only, protocol
// plugins/proto/stage/v1), and makes it a pipeline.Stage.
//
// What it does: the handshake under a deadline (a plugin stuck before its
// handshake is killed, not waited on); Configure with the stage's config
// table, then Describe, and only the hooks the plugin implements are
// registered (pipeline.HookLister); the message body is sent only to a
// plugin that asked for it; every call has its own deadline (Options.Timeout)
// and at most Options.MaxInFlight calls are in flight; a call that fails,
// times out or meets a crashed plugin gets the on_error policy (tempfail,
// continue or reject). The plugin's stderr and stdout go to the structured
// log, tagged with the stage. A plugin that exits, stops answering its
// health check or times out on several calls in a row is killed and started
// again with exponential backoff; one that keeps crashing is logged as a
// crash loop and restarted no faster than the backoff allows. Close kills
// the process and waits for it; on Linux the process also gets SIGKILL
// when Sluice dies (Pdeathsig), so a kill -9 of the relay leaves no plugin
// behind.
//
// Options.Instances processes serve one stage; each call goes to the least
// busy running one. A Pool shares processes between the pipelines of
// successive reloads: a stage whose identity (name, command, arguments,
// environment, config, instances) is unchanged keeps its processes, which
// stop with the last stage using them. Metrics (NewMetrics) count calls,
// their durations, restarts and live instances; Pool.Check is the
// readiness check (a crash loop, or no running instance).
//
// What it is not (yet): on_auth is not part of the protocol. It is not a
// sandbox: a plugin runs with the relay's user and rights.
package plugin
