-- pipeline.example.lua — the configuration `make run` uses.
--
-- Safe by default: SMTP on loopback only, relaying only for 127.0.0.1 and
-- ::1, mail for other clients accepted only for the local domain
-- example.test. Nothing leaves this machine: every recipient is routed to
-- a smarthost on 127.0.0.1:2602 (run `bin/sluice-bench sink -listen
-- 127.0.0.1:2602` to see it arrive), so the example works without DNS or
-- internet. Replace the routing stage to deliver to the world via MX.
local sluice = require("sluice")

sluice.node { name = "dev-1", hostname = "mx.example.test" }
sluice.local_domains { "example.test" }
sluice.spool { path = "./var/spool" }
sluice.events { file = "./var/events.jsonl" }

sluice.listen_smtp {
  addr = "127.0.0.1:2525",
  relay_networks = { "127.0.0.1/32", "::1/128" },
  max_message_size = "25MB",
  max_recipients = 100,
}

-- The HTTP submission API (create a key: bin/sluice apikey create --tenant demo -c pipeline.example.lua).
sluice.listen_http { addr = "127.0.0.1:8025" }

sluice.delivery {
  retry = { initial = "30s", max = "1h" },
  queue_lifetime = "5d",
}

-- A policy stage: tag mail from the app, stamp a header, refuse a test
-- address so you can see a 5xx.
sluice.stage("policy", {
  on_rcpt = function(txn, rcpt)
    if rcpt.address == "blocked@example.test" then
      return sluice.reject(550, "5.1.1", "This mailbox is blocked")
    end
  end,
  on_message = function(msg)
    msg:add_header("X-Sluice-Policy", "passed")
    if msg.sender:match("@app%.example%.test$") then
      msg:tag("app")
    end
  end,
})

-- Routing: everything to the local sink; a real deployment returns
-- sluice.route.mx() for the world and a relay for partners.
sluice.stage("routing", {
  on_route = function(msg, rcpt)
    return sluice.route.relay { host = "127.0.0.1", port = 2602, tls = "none" }
  end,
})
