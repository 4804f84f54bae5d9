-- Inbound MX for example.com and example.org: accepts mail from the
-- internet for the local domains only (never an open relay), refuses a
-- few known-bad senders, tags mail, and hands it to the mailbox server.
local sluice = require("sluice")

sluice.node { name = "mx-1", hostname = "mx1.example.com" }
sluice.local_domains { "example.com", "example.org" }
sluice.spool { path = "/var/lib/sluice/spool" }
sluice.events { file = "/var/lib/sluice/events.jsonl" }

sluice.listen_smtp {
  addr = "0.0.0.0:25",
  -- tls = { cert = "/etc/sluice/mx1.pem", key = "/etc/sluice/mx1.key" },  -- enables STARTTLS
  max_message_size = "50MB",
  max_connections = 2000,
  bare_line_ending = "reject",
}

sluice.stage("senders", sluice.lua("senders.lua"))

sluice.stage("mailboxes", {
  on_route = function(msg, rcpt)
    -- Local domains go to the mailbox server; nothing else reaches here
    -- (relay control refused it at RCPT).
    return sluice.route.relay { host = "10.0.1.20", port = 25, tls = "opportunistic" }
  end,
})
