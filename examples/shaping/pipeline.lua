-- Outbound shaping and egress pools: the shipped shaping file, two pools
-- of egress sources, and a route that picks the pool per tenant.
local sluice = require("sluice")

sluice.node { name = "out-1", hostname = "mta.example.com" }
sluice.spool { path = "./var/spool" }
sluice.listen_smtp { addr = "127.0.0.1:2525", relay_networks = { "127.0.0.1/32" } }

sluice.shaping { files = { "shaping.toml" } }

sluice.egress {
  sources = {
    { name = "ip-2", address = "127.0.0.2", helo = "mta2.example.com" },
    { name = "ip-3", address = "127.0.0.3", helo = "mta3.example.com",
      -- a new address: 500 messages a day for a week, then 2,000, then 10,000, then no cap
      warmup = { start = "2026-12-01", steps = {
        { days = 7, daily = 500 }, { days = 7, daily = 2000 }, { days = 14, daily = 10000 } } } },
  },
  pools = {
    { name = "transactional", sources = { "ip-2" } },
    { name = "bulk", sources = { "ip-3" } },
  },
  default_pool = "transactional",
}

sluice.stage("pick-pool", {
  on_route = function(msg, rcpt)
    if msg:get_meta("stream") == "bulk" then
      return sluice.route.mx { pool = "bulk" }
    end
    return sluice.route.mx() -- the default pool
  end,
})
