-- lua_test.lua: the library behind `sidekick lua-test` (compiled into the binary).
--
-- It gives test scripts the global T: fake requests with the same methods as
-- the proxy's request object, filters loaded the way the proxy loads them
-- (own sandbox environment, top level run once, hooks in a coroutine with a
-- time budget), and a few assertions. It receives privileged helpers from
-- the host that the test scripts never see.
local H = ...
local load_filter, run, out = H.load_filter, H.run, H.out

local T = {}
local count, failures = 0, 0

-- ---- values as text, deep equality ---------------------------------------------------

local function show(v, depth)
  depth = depth or 0
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) ~= "table" then return tostring(v) end
  if depth > 3 then return "{...}" end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local parts = {}
  for _, k in ipairs(keys) do
    local ks = type(k) == "string" and k:match("^[%a_][%w_]*$") and k or "[" .. show(k) .. "]"
    parts[#parts + 1] = ks .. " = " .. show(v[k], depth + 1)
  end
  return "{ " .. table.concat(parts, ", ") .. " }"
end

local function deep_eq(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, v in pairs(a) do if not deep_eq(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

-- print() in tests writes to stdout, as a TAP comment.
function T.print(...)
  local parts = {}
  for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
  out("# " .. table.concat(parts, " ") .. "\n")
end

function T.eq(actual, expected, msg)
  if not deep_eq(actual, expected) then
    error((msg and msg .. ": " or "") .. "expected " .. show(expected) .. ", got " .. show(actual), 2)
  end
end

function T.ok(v, msg)
  if not v then error(msg or "expected a true value, got " .. show(v), 2) end
  return v
end

function T.case(name, fn)
  count = count + 1
  local ok, err = pcall(fn)
  if ok then
    out(string.format("ok %d - %s\n", count, name))
  else
    failures = failures + 1
    out(string.format("not ok %d - %s: %s\n", count, name, tostring(err)))
  end
end

-- ---- fake requests ------------------------------------------------------------------------

local function check_name(n, fn)
  if type(n) ~= "string" or n == "" or n:find("[^%w!#$%%&'*+%-.^_`|~]") then
    error("r:" .. fn .. "(): bad header name or value, or the request already went upstream", 3)
  end
  return n:lower()
end

local function check_value(v, fn)
  if type(v) == "number" then v = tostring(v) end
  if type(v) ~= "string" or v:find("[%z\1-\8\10-\31\127]") then
    error("r:" .. fn .. "(): bad header name or value, or the request already went upstream", 3)
  end
  return v
end

local function lower_headers(h)
  local t = {}
  for k, v in pairs(h or {}) do
    local key = k:lower()
    if type(v) == "table" then
      local copy = {}
      for i, x in ipairs(v) do copy[i] = tostring(x) end
      t[key] = copy
    else
      t[key] = tostring(v)
    end
  end
  return t
end

local function first(v)
  if type(v) == "table" then return v[1] end
  return v
end

local function phase(r, want, fn)
  if r._phase ~= want then
    error("r:" .. fn .. "() is only allowed in " .. (want == "request" and "on_request" or "on_response"), 3)
  end
end

local Req = {}
Req.__index = Req

function Req:method() return self._d.method end
function Req:path() return self._d.path end
function Req:query() return self._d.query end
function Req:host() return self._d.host end
function Req:client_ip() return self._d.client_ip end
function Req:identity() return self._d.identity end
function Req:route() return self._d.route end
function Req:config() return self._d._config or {} end

function Req:set_path(p)
  local d = self._d
  phase(d, "request", "set_path")
  if type(p) ~= "string" or p:sub(1, 1) ~= "/" then error("bad argument #1 to 'set_path' (must start with '/')", 2) end
  if p:find("[%z\1-\32\127?#]") then error("bad argument #1 to 'set_path' (bad character in path)", 2) end
  d.path = p
end

function Req:header(n)
  local d = self._d
  return first(d.headers[tostring(n):lower()])
end

function Req:headers()
  local d = self._d
  local t = {}
  for k, v in pairs(d.headers) do
    t[k] = type(v) == "table" and table.concat(v, ", ") or v
  end
  return t
end

function Req:set_header(n, v)
  local d = self._d
  phase(d, "request", "set_header")
  d.headers[check_name(n, "set_header")] = check_value(v, "set_header")
end

-- Adds one more value of header k (a second value makes an array).
local function append(headers, k, val)
  local cur = headers[k]
  if cur == nil then
    headers[k] = val
  elseif type(cur) == "table" then
    cur[#cur + 1] = val
  else
    headers[k] = { cur, val }
  end
end

function Req:add_header(n, v)
  local d = self._d
  phase(d, "request", "add_header")
  append(d.headers, check_name(n, "add_header"), check_value(v, "add_header"))
end

function Req:remove_header(n)
  local d = self._d
  phase(d, "request", "remove_header")
  d.headers[check_name(n, "remove_header")] = nil
end

function Req:meta(k) return self._d.meta[k] end
function Req:set_meta(k, v) self._d.meta[tostring(k)] = tostring(v) end

function Req:ctx()
  local d = self._d
  d._ctx = d._ctx or {}
  return d._ctx
end

function Req:set_cluster(name)
  local d = self._d
  phase(d, "request", "set_cluster")
  if type(name) ~= "string" or (d._clusters and not d._clusters[name]) then
    error("r:set_cluster(): unknown cluster '" .. tostring(name) .. "'", 2)
  end
  d.cluster = name
end

function Req:respond(status, body, headers, reason)
  local d = self._d
  if type(status) ~= "number" or status < 200 or status > 599 or status % 1 ~= 0 then
    error("bad argument #1 to 'respond' (status must be 200..599)", 2)
  end
  if reason ~= nil and (type(reason) ~= "string" or #reason > 64 or not reason:find("^[a-z0-9_]+$")) then
    error("bad argument #4 to 'respond' (reason must be 1..64 characters of [a-z0-9_])", 2)
  end
  local hs = {}
  for k, v in pairs(headers or {}) do
    if type(k) ~= "string" or type(v) ~= "string" then
      error("r:respond(): headers must be a table of name = value strings", 2)
    end
    hs[check_name(k, "respond")] = check_value(v, "respond")
  end
  d._reply = { status = status, body = body and tostring(body) or "", headers = hs, reason = reason }
  coroutine.yield() -- the hook ends here, as in the proxy
end

function Req:status()
  local d = self._d
  return d.response and d.response.status or 0
end

function Req:response_header(n)
  local d = self._d
  return d.response and first(d.response.headers[tostring(n):lower()])
end

function Req:set_response_header(n, v)
  local d = self._d
  phase(d, "response", "set_response_header")
  d.response.headers[check_name(n, "set_response_header")] = check_value(v, "set_response_header")
end

function Req:add_response_header(n, v)
  local d = self._d
  phase(d, "response", "add_response_header")
  append(d.response.headers, check_name(n, "add_response_header"), check_value(v, "add_response_header"))
end

function Req:remove_response_header(n)
  local d = self._d
  phase(d, "response", "remove_response_header")
  d.response.headers[check_name(n, "remove_response_header")] = nil
end

function T.request(o)
  o = o or {}
  local path, query = o.path or "/", o.query
  local q = path:find("?", 1, true)
  if q then path, query = path:sub(1, q - 1), path:sub(q + 1) end
  local r = {
    method = o.method or "GET",
    path = path,
    query = query,
    host = o.host or "localhost",
    headers = lower_headers(o.headers),
    client_ip = o.client_ip or "127.0.0.1",
    identity = o.identity,
    meta = {},
    route = o.route or "test",
  }
  for k, v in pairs(o.meta or {}) do r.meta[k] = tostring(v) end
  if o.clusters then
    r._clusters = {}
    for _, c in ipairs(o.clusters) do r._clusters[c] = true end
  end
  return r
end

-- ---- filters --------------------------------------------------------------------------------

local Filter = {}
Filter.__index = Filter

local function outcome(st, err, r)
  if st == "error" then return { action = "error", error = err } end
  if r._reply then
    local rep = r._reply
    return { action = "respond", status = rep.status, body = rep.body, headers = rep.headers,
             reason = rep.reason }
  end
  if st == "yield" then
    return { action = "error", error = "coroutine.yield() is not allowed at the top of a hook" }
  end
  return { action = "continue" }
end

local function call(self, hook, r)
  r._config = self.config
  r._reply = nil
  local fn = self.module[hook]
  if not fn then return { action = "continue" } end
  -- The hook gets an object with the proxy's methods; the test reads the
  -- data (r.path, r.headers...) from r itself.
  local st, err = run(fn, setmetatable({ _d = r }, Req), self.budget)
  return outcome(st, err, r)
end

function Filter:request(r)
  r._phase = "request"
  return call(self, "on_request", r)
end

function Filter:response(r, resp)
  resp = resp or {}
  r.response = { status = resp.status or 200, headers = lower_headers(resp.headers) }
  r._phase = "response"
  return call(self, "on_response", r)
end

-- Any cluster name is known when a test gives no list.
local any_cluster = setmetatable({}, { __index = function(_, k) return type(k) == "string" or nil end })

-- T.filter(path [, config [, { budget = ms, route = name, clusters = { names } }]])
function T.filter(path, config, opts)
  opts = opts or {}
  local cfg = {}
  for k, v in pairs(config or {}) do cfg[tostring(k)] = tostring(v) end
  local clusters = any_cluster
  if opts.clusters then
    clusters = {}
    for _, c in ipairs(opts.clusters) do clusters[c] = true end
  end
  -- the same config table goes to init and to every r:config(), as in the proxy
  return setmetatable({
    module = load_filter(path, cfg, { route = opts.route or "test", clusters = clusters }),
    config = cfg,
    budget = opts.budget or 50,
  }, Filter)
end

-- Called by the host after the test file ran: prints the summary, returns the failures.
local function finish(load_failed)
  local passed = count - failures
  if load_failed then failures = failures + 1 end
  out(string.format("# %d passed, %d failed\n", passed, failures))
  return failures
end

return T, finish
