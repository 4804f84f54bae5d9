-- route_by_domain.lua — a shipped routing stage: recipient domains listed
-- below go to their smarthost; every other domain goes to its MX.
--
--   sluice.stage("routing", sluice.lua("scripts/route_by_domain.lua"))
--
-- Copy it and edit the table. A domain matches itself and its subdomains
-- ("example.net" also routes "eu.example.net").
local sluice = require("sluice")

local smarthosts = {
  ["partner.example"] = { host = "smtp.partner.example", port = 587, tls = "required" },
  ["example.net"]     = { host = "10.0.0.25", port = 25, tls = "opportunistic" },
}

local function lookup(domain)
  while domain do
    local r = smarthosts[domain]
    if r then
      return r
    end
    domain = domain:match("^[^.]+%.(.+)$")
  end
  return nil
end

return {
  on_route = function(msg, rcpt)
    local r = lookup(rcpt.domain)
    if r then
      return sluice.route.relay { host = r.host, port = r.port, tls = r.tls }
    end
    return sluice.route.mx()
  end,
}
