// Package luahost runs Lua pipeline stages on a pool of sandboxed
// gopher-lua states. It is not the configuration loader (internal/config
// evaluates pipeline.lua) and not the sandbox itself (internal/luahost/sandbox
// builds the states and the parts of the `sluice` module shared with the
// configuration).
//
// # Wiring
//
//	cfg, err := config.Load("pipeline.lua")
//	host, err := luahost.NewHost(cfg, logger)  // compiles once, builds one state
//	defer host.Close()                         // after the pipeline stopped
//	for _, spec := range cfg.Stages {
//		switch spec.Kind {
//		case config.StageLua, config.StageInline:
//			st, err := host.Stage(spec)       // a *Stage; Hooks() lists what it defines
//			...
//		}
//	}
//
// # Execution model
//
// Each script (sluice.lua("path")) and the configuration program (for
// inline stages) is compiled once to a *lua.FunctionProto. A pooled state
// is built by instantiating those protos: the configuration program is
// replayed in "runtime mode" (configuration functions record nothing,
// sluice.stage keeps inline tables by name) and each script runs in its
// own global environment and returns its stage table. Every state holds
// every Lua stage, so any state serves any stage. States are kept in a
// bounded free list (Lua.PoolSize, default 2*GOMAXPROCS+8); when it is
// empty a new state is built, so calls never wait for a state.
//
// Each hook call takes a state, sets a context whose deadline is the
// sooner of Lua.Timeout (0: config.Defaults().Lua.Timeout) and the
// caller's deadline (a caller's context that ends stops the call within
// 5 ms; callctx.go), calls the function in protected mode, removes the
// context, and returns the state. A state whose call failed or timed out is closed, never reused.
// Failures come back as *HookError: a runtime error carries "script:line";
// a deadline wraps context.DeadlineExceeded (pipeline.Chain answers 451
// 4.4.5); anything else becomes 451 4.3.0 with a generic text. Failures
// are logged with stage, hook, where and message.
//
// Objects passed to hooks (conn, txn, msg, rcpt, creds) are userdata
// valid only during the call; using one kept from an earlier call raises
// an error. Edits (headers, metadata, tags, scratch values, authentication
// results) do not change the Go values: the methods record them in a
// pipeline.Edits that the hook returns with its verdict, and the chain
// applies them after the hook returns (see bind_txn.go and
// pipeline/edits.go). An edit the hook may not make is refused when the
// configuration loads where the call is written in the hook (editcheck.go),
// else with an error where it is made.
//
// # Only the defined hooks run
//
// A *Stage has every hook method and implements pipeline.HookLister:
// Hooks() lists the hooks its table defines, and pipeline.Compile
// registers only those. So the Chain never enters Lua for a hook the
// script lacks, `sluice test` traces only real calls, and
// Chain.HasEventHooks stays false unless some stage defines on_event.
// Called directly, an undefined hook returns Continue without touching a
// Lua state.
//
// # Lua API available to stages
//
// Hook functions, in a table returned by a script or given inline:
//
//	on_connect(conn)            on_helo(conn, name)
//	on_auth(conn, creds)        on_mail(txn, sender)
//	on_rcpt(txn, rcpt)          on_message(msg)
//	on_route(msg, rcpt)         on_event(ev)
//
// Keys starting with "_" are private to the script and ignored; any other
// key must be one of the hooks above with a function value.
//
// Verdicts (return one; returning nothing continues with the next stage):
//
//	return sluice.accept()                               -- stop this hook point; at on_rcpt: allow relay
//	return sluice.accept{ name = "alice", tenant = "acme", scopes = {"send"} }  -- on_auth: the identity
//	return sluice.reject(550, "5.7.1", "Sender not allowed")  -- all arguments optional (550 5.7.1)
//	return sluice.tempfail(451, "4.7.1", "Try later")         -- all arguments optional (451 4.7.1)
//	return sluice.discard("spam trap")                   -- accept and drop, with an event
//
// Routes (return from on_route):
//
//	return sluice.route.mx()                             -- MX lookup (also mx{ port = 2525, tls = "required" })
//	return sluice.route.relay{ host = "smtp.partner.example", port = 587,
//		tls = "required", auth = { user = "u", pass = "p" } }
//
// Logging (to slog, with the stage name and the calling line):
//
//	sluice.log.info("checked", { rcpt = rcpt.address, score = 3 })  -- also debug, warn, error
//	print("x", 1)                                                    -- info, tab-separated
//
// Objects:
//
//	conn.ip conn.port conn.helo conn.tls conn.source conn.listener conn.id
//	conn.authenticated conn.relay_network conn.tenant conn.identity{name,tenant,method,scopes,senders}
//	txn.id txn.sender txn.recipients txn.conn
//	txn:get_meta(k) txn:set_meta(k, v) txn:meta() txn:tag(t) txn:tags()
//	msg.* as txn, plus msg.size, msg:header(n) msg:headers(n)
//	msg:add_header(n, v) msg:set_header(n, v) msg:remove_header(n)
//	rcpt.address rcpt.local_part (also rcpt["local"]) rcpt.domain rcpt.relay
//	creds.mechanism creds.username creds.password creds.token
//	ev.type ev.message_id ev.recipient ... (read-only; the event's JSON fields)
//
// Example script (scripts/policy.lua):
//
//	local sluice = require("sluice")
//	local blocked = { ["spam.example"] = true }
//	return {
//	  on_rcpt = function(txn, rcpt)
//	    if blocked[rcpt.domain] then
//	      return sluice.reject(550, "5.7.1", "Recipient domain blocked")
//	    end
//	  end,
//	  on_message = function(msg)
//	    msg:add_header("X-Sluice-Policy", "checked")
//	    msg:tag("policy-checked")
//	  end,
//	}
//
// The full reference with examples is docs/lua.md.
package luahost
