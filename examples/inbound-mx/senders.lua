-- A sender policy stage, loaded with sluice.lua("senders.lua").
local sluice = require("sluice")

local blocked = {
  ["spam.example"] = true,
  ["phish.example"] = true,
}

return {
  on_mail = function(txn, sender)
    local domain = sender:match("@(.+)$")
    if domain and blocked[domain:lower()] then
      sluice.log.info("blocked sender", { sender = sender })
      return sluice.reject(550, "5.7.1", "Sender domain blocked")
    end
  end,
  on_message = function(msg)
    if msg.conn.tls then
      msg:tag("tls")
    end
    msg:add_header("X-Sluice-Inbound", "mx1")
  end,
}
