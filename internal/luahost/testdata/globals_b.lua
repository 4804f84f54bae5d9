counter = "b"
return {
  on_connect = function(conn)
    counter = counter .. "b"
    return sluice.reject(550, "5.7.1", counter)
  end,
}
