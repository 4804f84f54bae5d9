-- Sandbox (docs/sandbox.md): a staging relay whose test tenants' mail passes
-- every stage and lands in per-tenant inboxes, read and awaited over the
-- HTTP API; `sluice check -c examples/sandbox/pipeline.lua` validates it.
local sluice = require("sluice")

sluice.node { name = "staging-1", hostname = "relay.staging.example.test" }
sluice.spool { path = "./var/spool" }
sluice.events { file = "./var/events.jsonl" }

-- Applications send over the API (keys of tenant "acme-test" are captured) ...
sluice.listen_http { addr = "127.0.0.1:8025" }
-- ... or over SMTP: everything accepted on this listener goes to the "ci" inbox.
sluice.listen_smtp { addr = "127.0.0.1:2526", relay_networks = { "127.0.0.1/32" }, sandbox = "ci" }

sluice.sandbox {
  tenants = { "acme-test" },
  retention = { messages = 5000, bytes = "100MiB", age = "3d" },
  links_allow = { "localhost:3000" },
  simulate = {
    { match = "bounce@sim.example.test", reply = "550 5.1.1 No such user" },
    { match = "full+*@sim.example.test", reply = "452 4.2.2 Mailbox full", times = 2 },
    { match = "@slow.sim.example.test", delay = "10s" },
    { match = "angry@sim.example.test", complaint = true },
    { match = "away@sim.example.test", auto_reply = "I am out of the office until Monday." },
  },
}

sluice.stage("routing", {
  on_route = function(msg, rcpt)
    -- Any other tenant's mail to the test domain is captured too.
    if rcpt.domain == "example.test" then
      return sluice.route.capture()
    end
    return sluice.route.mx()
  end,
})
