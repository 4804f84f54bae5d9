local t = require("sluice.test")
local s = t.stage("pipeline.lua", "inline")

function test_local_domain_needs_no_relay_rights()
  local r = s:on_rcpt(t.message { to = "bob@example.test" })
  t.eq(r.verdict, "continue")
  t.is_nil(r.code)
end

function test_other_domains_are_relay_denied_unless_authenticated()
  local r = s:on_rcpt(t.message { to = "bob@elsewhere.example" })
  t.eq(r.verdict, "continue")
  t.eq(r.code, 550)
  t.eq(r.text, "Relay access denied")
  t.is_nil(s:on_rcpt(t.message { to = "bob@elsewhere.example", auth = "alice" }).code)
end

function test_blocked_mailbox()
  local r = s:on_rcpt(t.message { to = "blocked@example.test" })
  t.eq({ r.verdict, r.code, r.enhanced }, { "reject", 550, "5.1.1" })
end

function test_meta_and_scratch_edits_are_applied()
  local m = t.message { from = "a@b.example", meta = { order = "7" } }
  local r = s:on_mail(m)
  t.eq(r.edits.meta, { seen = "yes" })
  t.eq(m.meta, { order = "7", seen = "yes" })
  t.eq(m.scratch.spf, "pass")
end

function test_discard()
  local r = s:on_message(t.message { headers = { { "From", "a@b.example" }, { "Subject", "drop me" } } })
  t.eq(r.verdict, "discard")
  t.ok(r.discard)
  t.eq(r.reason, "dropped by test")
end
