-- HAProxy side of the `lua` benchmark scenario (tests/bench/run): the same work as
-- bench_filter.lua. Loaded with `lua-load`; used as `http-request lua.bench_req` and
-- `http-response lua.bench_res`. txn:set_priv keeps a Lua value for the transaction
-- (the counterpart of r:ctx() and ngx.ctx).
core.register_action("bench_req", { "http-req" }, function(txn)
    local h = txn.http:req_get_headers()["x-bench-user"]
    txn:set_priv(h and h[0] or "none")
end)

core.register_action("bench_res", { "http-res" }, function(txn)
    txn.http:res_set_header("x-bench-user", txn:get_priv())
end)
