package plugin

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
)

// Noticing a plugin's exit at once.
//
// go-plugin reports an exit (Client.Exited) only after the process was
// reaped and its stdout and stderr were drained, and nothing tells the
// host when that happens: polled by the health check, a crash of an idle
// plugin was noticed up to HealthInterval late. The plugin's gRPC
// connection, a Unix socket the process holds, closes the moment the
// process dies, whoever still holds its output; gRPC then moves the
// connection out of READY. watchExit waits for that (a goroutine parked
// on a channel: no timer, no CPU while the plugin is up) and probes the
// instance, which restarts it (with the slot's backoff) when it does not
// answer a health check.

// watchExit starts watching inst's connection until inst is stopped
// (stopInstance cancels the watch) or the connection is shut down.
// inst.conn nil (not a gRPC client): nothing is watched.
func (sl *slot) watchExit(inst *instance) {
	if inst.conn == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	inst.unwatch = cancel
	go watchConn(ctx, inst.conn, func() { sl.probe(inst) })
}

// watchConn calls lost each time conn leaves READY for IDLE or
// TRANSIENT_FAILURE, until ctx ends or conn is shut down.
func watchConn(ctx context.Context, conn *grpc.ClientConn, lost func()) {
	st := conn.GetState()
	for st != connectivity.Shutdown {
		if !conn.WaitForStateChange(ctx, st) {
			return // ctx ended
		}
		st = conn.GetState()
		if st == connectivity.Idle || st == connectivity.TransientFailure {
			lost()
		}
	}
}
