-- Background work of one worker (worker 0): the route table from the engine's service
-- registry (GET /routes on its control socket, every second: a change is live within
-- 2 s), and health checks of every upstream (a TCP connect, every second; see
-- flatnet.health). The engine marks an overlay upstream whose host it cannot reach
-- ("down": the reason, from its path liveness): that reason is what the check reports
-- when its own connect fails too. The connect decides: the moment the path carries
-- packets again the upstream is back, without waiting for the engine to notice.

local cjson = require "cjson.safe"
local config = require "flatnet.config"
local health = require "flatnet.health"

local ngx = ngx
local format = string.format

local _M = {}

local function http_get(sock_path, path, timeout_ms)
    -- nginx logs a failed connect() to a missing unix socket at "crit", once a
    -- second while the engine is stopped: look first (opening a socket file fails
    -- with ENXIO, a missing one with ENOENT)
    local f, ferr = io.open(sock_path, "r")
    if f then
        f:close()
    elseif ferr and ferr:find("No such file", 1, true) then
        return nil, "cannot reach the engine at " .. sock_path .. ": no such socket (is flatnet-engine running?)"
    end
    local sock = ngx.socket.tcp()
    sock:settimeout(timeout_ms or 1000)
    local ok, err = sock:connect("unix:" .. sock_path)
    if not ok then
        return nil, "cannot reach the engine at " .. sock_path .. ": " .. err
    end
    sock:send(format("GET %s HTTP/1.0\r\nHost: flatnet\r\n\r\n", path))
    local body, rerr = sock:receive("*a")
    sock:close()
    if not body then
        return nil, rerr
    end
    local status = tonumber(body:match("^HTTP/%d%.%d (%d+)"))
    local payload = body:match("\r\n\r\n(.*)$")
    if status ~= 200 then
        return nil, format("engine answered %s", tostring(status))
    end
    return payload
end
_M.http_get = http_get

local MAX_REPORTED = 100

-- a value from the route table, safe for one log line
local function printable(v)
    return (tostring(v):sub(1, 300):gsub("%c", "?"))
end

local function refresh_routes(opts)
    local dict = ngx.shared[opts.dict]
    local body, err = http_get(opts.engine_socket, "/routes")
    if not body then
        dict:set("feed_error", err)
        return
    end
    local doc = cjson.decode(body)
    local routes, rejected = config.validate(doc or {})
    if not routes then
        dict:set("feed_error", "engine route table rejected: " .. rejected)
        return
    end
    dict:delete("feed_error")
    if body ~= dict:get("routes") then
        -- a bad route is dropped alone (config.validate); say which and why, once per
        -- change, for the first MAX_REPORTED (the log and the shared dict stay small)
        local shown = {}
        for i = 1, math.min(#rejected, MAX_REPORTED) do
            local r = rejected[i]
            ngx.log(ngx.WARN, "flatnet: route dropped: ", printable(r.reason), " (service ",
                    printable(r.service), ", host ", printable(r.host), ")")
            shown[i] = r
        end
        if #rejected > MAX_REPORTED then
            ngx.log(ngx.WARN, "flatnet: ", #rejected - MAX_REPORTED, " more routes dropped")
            shown[#shown + 1] = { reason = format("%d more routes dropped", #rejected - MAX_REPORTED) }
        end
        dict:set("rejected", cjson.encode(shown))
        dict:set("routes", body)
        dict:incr("routes_version", 1, 0)
    end
end

local function check(dict, addr, timeout_ms, engine_says)
    local host, port = addr:match("^(.+):(%d+)$")
    local sock = ngx.socket.tcp()
    sock:settimeout(timeout_ms)
    local ok, err = sock:connect(host, tonumber(port))
    if ok then
        sock:close()
        health.up(dict, addr)
    else
        health.down(dict, addr, engine_says or format("health check: connect %s", err or "failed"))
    end
end

local function check_all(opts)
    local dict = ngx.shared[opts.dict]
    local raw = cjson.decode(dict:get("routes") or "{}") or {}
    local routes = config.validate(raw) or {}
    -- the engine's reason for an upstream on a host it cannot reach (not kept by validate)
    local engine_says = {}
    for _, r in ipairs(type(raw.routes) == "table" and raw.routes or {}) do
        for _, u in ipairs(type(r) == "table" and type(r.upstreams) == "table" and r.upstreams or {}) do
            if type(u) == "table" and type(u.addr) == "string" and type(u.down) == "string" then
                engine_says[u.addr] = printable(u.down)
            end
        end
    end
    local seen, threads = {}, {}
    for _, r in ipairs(routes) do
        for _, u in ipairs(r.upstreams) do
            if not seen[u.addr] then
                seen[u.addr] = true
                threads[#threads + 1] = ngx.thread.spawn(check, dict, u.addr, opts.check_timeout, engine_says[u.addr])
            end
        end
    end
    for _, t in ipairs(threads) do
        ngx.thread.wait(t)
    end
end

function _M.start(opts)
    opts = opts or {}
    opts.dict = opts.dict or "flatnet"
    opts.engine_socket = opts.engine_socket or "/run/flatnet/engine.sock"
    opts.interval = opts.interval or 1
    opts.check_timeout = opts.check_timeout or 700
    if ngx.worker.id() ~= 0 then
        return
    end
    local function tick(premature)
        if premature then
            return
        end
        refresh_routes(opts)
        check_all(opts)
    end
    ngx.timer.at(0, tick)
    ngx.timer.every(opts.interval, tick)
end

return _M
