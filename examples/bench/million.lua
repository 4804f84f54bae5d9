-- A million queued (examples/bench/million.sh): every recipient is relayed
-- to a destination that is down until the script starts a sink there.
-- {{DESTS}} = 1: one queue, relay:127.0.0.1:{{SINK_PORT}}. {{DESTS}} = K > 1: K
-- queues, relay:127.0.X.Y:{{SINK_PORT}}, picked at random per message (the sink
-- then listens on every loopback address).
local sluice = require("sluice")

sluice.node { name = "million-1", hostname = "relay.bench.test" }
sluice.spool { path = "{{SPOOL}}" }
sluice.events { file = "{{EVENTS}}" }

sluice.listen_smtp {
  addr = "127.0.0.1:{{SMTP_PORT}}",
  relay_networks = { "127.0.0.1/32" },
  max_connections = 2000,
}
sluice.listen_http { addr = "127.0.0.1:{{HTTP_PORT}}" }
sluice.listen_admin { addr = "127.0.0.1:{{ADMIN_PORT}}" }

sluice.delivery {
  max_per_destination = 20,
  max_messages_per_conn = 1000,
  -- One failed attempt per message while the destination is down; the
  -- script retries everything at once (sluice queue flush) when it is back.
  retry = { initial = "6h", max = "6h" },
}

local dests = {{DESTS}}

sluice.stage("routing", {
  on_route = function(msg, rcpt)
    if dests <= 1 then
      return sluice.route.relay { host = "127.0.0.1", port = {{SINK_PORT}}, tls = "none" }
    end
    local n = math.random(dests) - 1
    local host = string.format("127.0.%d.%d", 1 + math.floor(n / 250), 1 + n % 250)
    return sluice.route.relay { host = host, port = {{SINK_PORT}}, tls = "none" }
  end,
})
