-- Tests of senders.lua: sluice test-scripts examples/inbound-mx
local t = require("sluice.test")
local senders = t.stage("senders.lua")

function test_blocked_domains_any_case()
  for _, s in ipairs({ "a@spam.example", "a@PHISH.example" }) do
    local r = senders:on_mail(t.message { from = s })
    t.eq({ r.verdict, r.code, r.enhanced, r.text }, { "reject", 550, "5.7.1", "Sender domain blocked" }, s)
  end
end

function test_other_senders_pass()
  t.eq(senders:on_mail(t.message { from = "a@ok.example" }).verdict, "continue")
  t.eq(senders:on_mail(t.message { from = "" }).verdict, "continue", "null sender")
end

function test_stamps_every_message()
  local m = t.message {}
  senders:on_message(m)
  t.eq(m:headers("X-Sluice-Inbound"), { "mx1" })
end

function test_tags_tls_only_over_tls()
  local tls = t.message { tls = "TLS1.3" }
  senders:on_message(tls)
  t.eq(tls.tags, { "tls" })
  local clear = t.message {}
  senders:on_message(clear)
  t.eq(clear.tags, {}, "a clear-text connection is not tagged tls")
end
