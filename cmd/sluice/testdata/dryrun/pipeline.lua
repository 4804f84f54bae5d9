-- The configuration of the `sluice test` golden traces (test_cmd_test.go):
-- a built-in stage (ratelimit), a Lua script stage, an inline Lua stage and
-- a plugin stage (the stamp test plugin, built by the test into ./stamp).
local sluice = require("sluice")

sluice.node { name = "test-1", hostname = "mx.example.test" }
sluice.local_domains { "example.test" }
sluice.listen_smtp { addr = "127.0.0.1:0", relay_networks = { "10.0.0.0/8" } }

sluice.stage("limits", sluice.builtin.ratelimit {
  limits = { { key = "recipient_domain", rate = "2/hour", burst = 2, count = "recipients" } },
})
sluice.stage("sender-policy", sluice.lua("../../../../scripts/sender_policy.lua"))
sluice.stage("policy", {
  on_rcpt = function(txn, rcpt)
    if rcpt.address == "blocked@example.test" then
      return sluice.reject(550, "5.1.1", "This mailbox is blocked")
    end
    if rcpt.domain == "partner.example" then
      return sluice.accept()
    end
  end,
  on_message = function(msg)
    if msg:header("Subject") == "crash" then
      local t = nil
      return t.field -- a script error: the client sees 451 4.3.0
    end
    if msg:header("Subject") == "later" then
      return sluice.tempfail(451, "4.7.1", "Try again later")
    end
    msg:set_meta("checked", "yes")
  end,
})
sluice.stage("stamp", sluice.plugin { cmd = "./stamp" })
sluice.stage("routing", sluice.lua("../../../../scripts/route_by_domain.lua"))
