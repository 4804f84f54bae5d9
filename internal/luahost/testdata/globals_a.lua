counter = "a"
return {
  on_connect = function(conn)
    counter = counter .. "a"
    return sluice.reject(550, "5.7.1", counter)
  end,
}
