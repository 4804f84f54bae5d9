local sluice = require("sluice")
sluice.local_domains { "example.test" }
sluice.listen_smtp { addr = "127.0.0.1:0" }
sluice.stage("inline", {
  on_rcpt = function(txn, rcpt)
    if rcpt.address == "blocked@example.test" then
      return sluice.reject(550, "5.1.1", "This mailbox is blocked")
    end
  end,
  on_mail = function(txn, sender)
    txn:set_meta("seen", "yes")
    txn:set_scratch("spf", "pass")
  end,
  on_message = function(msg)
    if msg:header("Subject") == "drop me" then
      return sluice.discard("dropped by test")
    end
  end,
})
