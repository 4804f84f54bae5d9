local sluice = require("sluice")
return {
  on_rcpt = function(txn, rcpt)
    if rcpt.local_part == "crash" then
      error("no such table")
    end
    if rcpt.domain == "blocked.example" then
      return sluice.reject(550, "5.7.1", "blocked")
    end
  end,
}
