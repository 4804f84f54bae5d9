-- sender_policy.lua — a shipped sender and content policy stage.
--
--   sluice.stage("sender-policy", sluice.lua("scripts/sender_policy.lua"))
--
-- Copy it and edit the tables below. It:
--   * refuses senders from blocked domains at MAIL FROM (550 5.7.1);
--   * refuses a message without a From: header (550 5.6.0), as RFC 5322
--     requires one;
--   * stamps X-Sluice-Policy and tags mail from the listed bulk senders.
local sluice = require("sluice")

local blocked_sender_domains = {
  ["spam.example"] = true,
  ["phish.example"] = true,
}

local bulk_sender_domains = {
  ["news.example.com"] = true,
}

local function domain_of(addr)
  local d = addr:match("@([^@]+)$")
  return d and d:lower() or nil
end

return {
  on_mail = function(txn, sender)
    local d = domain_of(sender)
    if d and blocked_sender_domains[d] then
      sluice.log.info("sender refused", { sender = sender })
      return sluice.reject(550, "5.7.1", "Sender domain is blocked here")
    end
  end,

  on_message = function(msg)
    if not msg:header("From") then
      return sluice.reject(550, "5.6.0", "A From: header is required")
    end
    local d = domain_of(msg.sender)
    if d and bulk_sender_domains[d] then
      msg:tag("bulk")
    end
    msg:add_header("X-Sluice-Policy", "checked")
  end,
}
