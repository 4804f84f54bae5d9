-- Tests of sender_policy.lua: run with `sluice test-scripts scripts`.
local t = require("sluice.test")
local policy = t.stage("sender_policy.lua")

function test_blocked_sender_domains_are_refused_at_mail()
  for _, sender in ipairs({ "a@spam.example", "b@Phish.Example" }) do
    local r = policy:on_mail(t.message { from = sender })
    t.eq(r.verdict, "reject", sender)
    t.eq(r.code, 550, sender)
    t.eq(r.enhanced, "5.7.1", sender)
    t.eq(r.text, "Sender domain is blocked here")
  end
end

function test_other_senders_and_the_null_sender_pass_mail()
  for _, sender in ipairs({ "a@ok.example", "a@spam.example.org", "" }) do
    local r = policy:on_mail(t.message { from = sender })
    t.eq(r.verdict, "continue", sender)
    t.is_nil(r.code, sender)
  end
end

function test_a_message_without_from_is_refused()
  local m = t.message { from = "a@ok.example", headers = { Subject = "no From here" } }
  local r = policy:on_message(m)
  t.eq(r.verdict, "reject")
  t.eq(r.code, 550)
  t.eq(r.enhanced, "5.6.0")
  t.is_nil(m:header("X-Sluice-Policy"), "a refused message is not stamped")
end

function test_every_accepted_message_is_stamped()
  local m = t.message { from = "a@ok.example" }
  local r = policy:on_message(m)
  t.eq(r.verdict, "continue")
  t.eq(r.edits.headers, { { op = "add", name = "X-Sluice-Policy", value = "checked" } })
  t.eq(m:header("X-Sluice-Policy"), "checked")
  t.eq(m.tags, {})
end

function test_bulk_senders_are_tagged()
  local m = t.message { from = "news@NEWS.example.com" }
  policy:on_message(m)
  t.eq(m.tags, { "bulk" })
  t.eq(m:header("X-Sluice-Policy"), "checked")
end

function test_no_route_or_recipient_policy()
  local m = t.message { to = "bob@example.org", relay_network = true }
  t.eq(policy:on_rcpt(m).verdict, "none")
  local r = policy:on_route(m)
  t.eq(r.verdict, "none")
  t.eq(r.route.kind, "mx", "the chain's default route")
end
