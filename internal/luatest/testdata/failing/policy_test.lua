local t = require("sluice.test")
local policy = t.stage("policy.lua")

function test_passes()
  local r = policy:on_rcpt(t.message { to = "a@blocked.example" })
  t.eq(r.code, 550)
end

function test_wrong_code()
  local r = policy:on_rcpt(t.message { to = "a@blocked.example" })
  t.eq(r.code, 451, "the code of a blocked domain")
end

function test_wrong_table()
  t.eq({ 1, 2, x = "y" }, { 1, 3, x = "y" })
end

function test_script_error_is_a_verdict()
  local r = policy:on_rcpt(t.message { to = "crash@x.example" })
  t.eq(r.verdict, "error")
  t.contains(r.error, "policy.lua:5: no such table")
  t.eq(r.code, 451)
end

function test_runtime_error_in_test()
  local x = nil
  return x.field
end
