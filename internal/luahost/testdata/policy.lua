-- Example stage script used by the luahost tests.
local sluice = require("sluice")

local blocked = { ["blocked.example"] = true }

local M = {}

function M.on_rcpt(txn, rcpt)
  if blocked[rcpt.domain] then
    return sluice.reject(550, "5.7.1", "Recipient domain blocked")
  end
  if rcpt.local_part == "boom" then
    error("boom requested")
  end
  if rcpt.local_part == "loop" then
    while true do end
  end
end

function M.on_message(msg)
  msg:add_header("X-Policy", "checked")
  msg:tag("policy")
end

-- Private helper, ignored by Sluice.
M._blocked = blocked

return M
