-- Route filter of the `lua` benchmark scenario (tests/bench/run, issue #5).
-- Reads a request header in on_request, sets it as a response header in on_response.
-- nginx does the same with access_by_lua_block + header_filter_by_lua_block, HAProxy
-- with haproxy_bench.lua beside this file.
local M = {}

function M.on_request(r)
    r:ctx().user = r:header("x-bench-user") or "none"
end

function M.on_response(r)
    r:set_response_header("x-bench-user", r:ctx().user)
end

return M
