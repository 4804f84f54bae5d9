-- Benchmark relay: SMTP on 127.0.0.1:2605 (the port ../shared/bench's
-- harness expects), relaying every message to the sink on 127.0.0.1:2602,
-- with one Lua stage in the path and fsync before every 250.
-- SPOOL_DIR / EVENTS_FILE can be set by the caller (see run.sh).
local sluice = require("sluice")

sluice.node { name = "bench-1", hostname = "relay.bench.test" }
sluice.spool { path = "{{SPOOL}}" }
sluice.events { file = "{{EVENTS}}" }

sluice.listen_smtp {
  addr = "127.0.0.1:2605",
  relay_networks = { "127.0.0.1/32" },
  max_connections = 2000,
}
sluice.listen_http { addr = "127.0.0.1:8025" }

sluice.delivery {
  max_per_destination = 20,
  max_messages_per_conn = 1000,
}

sluice.stage("stamp", {
  on_message = function(msg)
    msg:add_header("X-Bench", "1")
  end,
})

sluice.stage("routing", {
  on_route = function(msg, rcpt)
    return sluice.route.relay { host = "127.0.0.1", port = 2602, tls = "none" }
  end,
})
