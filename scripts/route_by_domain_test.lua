-- Tests of route_by_domain.lua: run with `sluice test-scripts scripts`.
local t = require("sluice.test")
local routing = t.stage("route_by_domain.lua")

local function route_of(addr)
  local r = routing:on_route(t.message { to = addr }, addr)
  t.eq(r.verdict, "accept", addr)
  return r.route
end

function test_partner_goes_to_its_smarthost_with_tls_required()
  t.eq(route_of("bob@partner.example"), {
    kind = "relay", host = "smtp.partner.example", port = 587, tls = "required",
    queue = "relay:smtp.partner.example:587",
  })
end

function test_subdomains_follow_their_parent()
  local rt = route_of("ops@eu.example.net")
  t.eq(rt.host, "10.0.0.25")
  t.eq(rt.port, 25)
  t.eq(rt.tls, "opportunistic")
  t.eq(route_of("x@a.b.example.net").host, "10.0.0.25")
end

function test_domain_match_is_not_a_suffix_match()
  -- "notexample.net" is not a subdomain of "example.net".
  t.eq(route_of("x@notexample.net"), { kind = "mx", queue = "notexample.net" })
end

function test_everything_else_goes_to_mx()
  local rt = route_of("someone@elsewhere.test")
  t.eq(rt.kind, "mx")
  t.eq(rt.queue, "elsewhere.test")
end

function test_routing_makes_no_edits()
  local r = routing:on_route(t.message { to = "bob@partner.example" })
  t.is_nil(r.edits)
  t.is_nil(r.code)
end
