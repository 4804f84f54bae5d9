-- Outbound relay for applications: they submit over SMTP from the app
-- network or over the HTTP API with a key; everything leaves through the
-- provider's smarthost over STARTTLS (required) with AUTH, except mail to a
-- partner domain, which goes straight to its MX.
local sluice = require("sluice")

sluice.node { name = "out-1", hostname = "out.example.com" }
sluice.spool { path = "/var/lib/sluice/spool" }
sluice.events { file = "/var/lib/sluice/events.jsonl" }

sluice.listen_smtp {
  addr = "10.0.0.10:2525",
  relay_networks = { "10.0.0.0/16" },   -- the application network
  max_message_size = "20MB",
  max_recipients = 500,
}
sluice.listen_http { addr = "10.0.0.10:8025" }

sluice.delivery {
  retry = { initial = "1m", max = "1h" },
  queue_lifetime = "2d",
}

sluice.stage("policy", {
  on_mail = function(txn, sender)
    -- Only our own sender domains may leave through us.
    if not (sender:match("@example%.com$") or sender:match("@mail%.example%.com$")) then
      return sluice.reject(550, "5.7.1", "Sender domain not allowed here")
    end
  end,
  on_message = function(msg)
    msg:remove_header("X-Internal-Trace")
    if msg.conn.tenant then
      msg:set_meta("tenant", msg.conn.tenant)
    end
  end,
})

sluice.stage("routing", {
  on_route = function(msg, rcpt)
    if rcpt.domain == "partner.example.net" then
      return sluice.route.mx { tls = "required" }
    end
    return sluice.route.relay {
      host = "smtp.provider.example", port = 587, tls = "required",
      auth = { user = "example-com", pass = "change-me" },
    }
  end,
})
