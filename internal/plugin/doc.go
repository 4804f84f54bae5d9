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
// continue or reject); a gRPC status the plugin returns (UNAVAILABLE
// included) is such a failure, never a reason to restart it. The plugin's
// stderr and stdout go to the structured log, tagged with the stage (4 KiB
// per record, 100 lines a second with bursts of 500), and a start failure
// quotes the last 2 KB of its stderr. A plugin that exits, breaks its
// connection, stops answering its health check or times out on several
// calls in a row is killed and started again with exponential backoff; one
// that keeps crashing is logged as a crash loop and restarted no faster
// than the backoff allows. On Linux a plugin runs in its own process group:
// Close asks it to shut down, SIGKILLs the group after 2 s (a frozen plugin
// never answers) and waits for it; a restart kills the group at once. The
// plugin also gets SIGKILL when Sluice dies (Pdeathsig), so a kill -9 of
// the relay leaves no plugin behind, but it cannot reach the plugin's
// children: a plugin that forks must see to them (docs/plugins.md).
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
