-- Rate limits (docs/ratelimit.md): a relay for authenticated senders and
-- applications (HTTP API) whose limits hold across every node sharing the
-- Redis below; `sluice check -c examples/ratelimit/pipeline.lua` validates it.
local sluice = require("sluice")

sluice.node { name = sluice.env("SLUICE_NODE", "relay-1"), hostname = "relay.example.test" }
sluice.spool { path = "./var/spool" }
sluice.events { file = "./var/events.jsonl" }
sluice.redis { addr = sluice.env("SLUICE_REDIS", "127.0.0.1:6379"), key_prefix = "sluice:", timeout = "100ms" }

sluice.listen_smtp { addr = "127.0.0.1:2525", relay_networks = { "127.0.0.1/32" } }
sluice.listen_http { addr = "127.0.0.1:8025" }

-- Built-in limits, shared by the cluster through Redis. If Redis cannot
-- answer, mail keeps flowing (the metric sluice_ratelimit_store_errors_total
-- and a warning say so).
sluice.stage("limits", sluice.builtin.ratelimit {
  store = "redis",
  on_store_error = "allow",
  limits = {
    { key = "client_ip", rate = "30/minute", count = "connections" },
    { key = "tenant", rate = "1000/hour", burst = 50 },
    { key = "identity", rate = "300/hour" },
    { key = "sender_domain", rate = "2000/hour" },
    { key = "recipient_domain", rate = "20/second", count = "recipients" },
  },
})

-- A limit computed in Lua: at most 100 messages an hour per tenant and
-- campaign (the "campaign" metadata an application sets over the API).
sluice.stage("campaigns", {
  on_message = function(msg)
    local campaign = msg:get_meta("campaign")
    if campaign == nil then return end
    local ok, retry = sluice.ratelimit.check("campaign:" .. (msg.conn.tenant or "") .. ":" .. campaign, "100/hour")
    if ok == false then
      return sluice.tempfail(450, "4.7.1", "Campaign " .. campaign .. " is over its rate, try again in " .. math.ceil(retry) .. " s",
        { retry_after = retry }) -- HTTP 429 with Retry-After
    end
  end,
})

sluice.stage("routing", {
  on_route = function(msg, rcpt)
    return sluice.route.mx()
  end,
})
