-- The request adapter: the only module that reads ngx.* on the request path.
-- exec() picks the route (router.select, pure), a healthy upstream (router.pick), and
-- hands nginx the upstream address in $flatnet_upstream; or answers 502/503 itself
-- with a page that names the service.
--
-- Escalation per request: a remote service reached over the overlay, with its host's
-- gateway as fallback, gets OVERLAY_TIMEOUT seconds to connect and to answer (each
-- read); if that try fails (refused, reset, timed out) nginx tries once more, through
-- the peer gateway over the LAN, when proxy_next_upstream allows it: always when the
-- request was not sent yet, and once sent only for idempotent methods (a POST may
-- already have done its work). balance() hands nginx the second address. A failed
-- try marks its upstream down at once (flatnet.health), so the next requests go
-- straight to the fallback. Whatever still fails ends in upstream_error(): a page
-- that names the service and says what failed, never nginx's generic one.
--
-- The route table lives in the shared dict as JSON under "routes", with a version
-- under "routes_version"; each worker rebuilds its router only when the version moves,
-- so a change takes effect at once, without reload.

local router = require "flatnet.router"
local config = require "flatnet.config"
local health = require "flatnet.health"
local cjson = require "cjson.safe"

local ngx = ngx
local format = string.format
local gsub = string.gsub

local _M = {
    DICT = "flatnet",
    OVERLAY_TIMEOUT = 3,   -- seconds; flatnet gateway run --overlay-timeout (configure())
    FALLBACK_CONNECT = 3,  -- the peer gateway, over the LAN
    FALLBACK_READ = 60,
}

-- init_worker_by_lua: the rendered settings
function _M.configure(opts)
    _M.OVERLAY_TIMEOUT = tonumber(opts.overlay_timeout) or _M.OVERLAY_TIMEOUT
end

local cached_version, cached_router = nil, router.new({})
local rr = 0

-- tests swap the ngx dependency (Kong's _set_ngx)
function _M._set_ngx(mock)
    ngx = mock
    health._set_ngx(mock)
end

local function escape_html(s)
    return (gsub(s, "[<>&\"]", { ["<"] = "&lt;", [">"] = "&gt;", ["&"] = "&amp;", ['"'] = "&quot;" }))
end

local function page(status, title, detail)
    ngx.status = status
    ngx.header["Content-Type"] = "text/html; charset=utf-8"
    ngx.header["Cache-Control"] = "no-store"
    ngx.say(format([[<!doctype html><html><head><meta charset="utf-8"><title>%d %s</title>
<style>body{font-family:sans-serif;margin:3em;color:#333}h1{font-size:1.4em}p{color:#666}</style></head>
<body><h1>%d &mdash; %s</h1><p>%s</p><p><small>Flatnet gateway</small></p></body></html>]],
        status, escape_html(title), status, escape_html(title), escape_html(detail)))
    return ngx.exit(status)
end

function _M.current_router()
    local dict = ngx.shared[_M.DICT]
    local version = dict:get("routes_version")
    if version ~= cached_version then
        local doc = cjson.decode(dict:get("routes") or '{"routes":[]}')
        local routes, err = config.validate(doc or {})
        if not routes then
            ngx.log(ngx.ERR, "flatnet: route table rejected: ", err)
            routes = {}
        end
        cached_router = router.new(routes)
        cached_version = version
    end
    return cached_router
end

function _M.exec()
    local dict = ngx.shared[_M.DICT]
    local host = ngx.var.host or ""
    local route = _M.current_router():select(host, ngx.var.uri)
    if not route then
        return page(502, "No service here",
                    format("No Flatnet service is published for the host %q.", router.normalize_host(host) or ""))
    end
    -- a request another gateway sent us must be served here, never passed on again;
    -- its X-Real-IP is the LAN client's (trusted on the office LAN: see docs/gateway.md)
    local hopped = ngx.var.http_x_flatnet_hop ~= nil
    if hopped and ngx.var.http_x_real_ip then
        ngx.var.flatnet_client = ngx.var.http_x_real_ip
    end
    rr = rr + 1
    local function healthy(addr)
        return health.is_up(dict, addr)
    end
    local up = router.pick(route, healthy, rr)
    if up and hopped and up.kind == "gateway" then
        up = nil
    end
    if not up then
        local why = ""
        for _, u in ipairs(route.upstreams) do
            local w = health.why(dict, u.addr)
            if type(w) == "string" and (u.kind == "overlay" or not hopped) then
                why = why .. format(" %s (%s): %s.", u.addr, u.kind, w)
            end
        end
        return page(503, format("Service %s is unavailable", route.service),
                    format("The service %q has no healthy upstream right now.%s Flatnet checks again every "
                           .. "second; try again shortly.", route.service, why))
    end
    local ctx = ngx.ctx
    ngx.var.flatnet_upstream = up.addr
    ctx.flatnet_upstream = up.addr
    ngx.var.flatnet_service = route.service
    ngx.var.flatnet_path = up.kind
    if up.kind == "overlay" and not hopped then
        for _, u in ipairs(route.upstreams) do
            if u.kind == "gateway" and healthy(u.addr) then
                ctx.flatnet_fallback = u.addr
                break
            end
        end
    end
    -- the header goes with the first try already: nginx sends the same request to the
    -- fallback, and the service behind the overlay ignores it
    if up.kind == "gateway" or ctx.flatnet_fallback then
        ngx.req.set_header("X-Flatnet-Hop", "1")
    end
end

local function failure_text(status)
    if status == 504 then
        return "no answer in time"
    end
    return "connection failed (refused, reset or unreachable)"
end

-- balancer_by_lua: hand nginx the chosen upstream, so the upstream block's keepalive
-- pool reuses connections (proxy_pass to a variable would open one per request)
function _M.balance()
    local balancer = require "ngx.balancer"
    local ctx = ngx.ctx
    local addr = ctx.flatnet_upstream
    local state, code = balancer.get_last_failure()
    if state ~= nil and ctx.flatnet_fallback then
        -- the overlay try failed and nginx retries (proxy_next_upstream allowed it)
        health.down(ngx.shared[_M.DICT], addr, format("a request over the overlay failed: %s",
                                                       failure_text(tonumber(code))))
        addr = ctx.flatnet_fallback
        ctx.flatnet_fallback = nil
        ngx.var.flatnet_upstream = addr
        ngx.var.flatnet_path = "gateway"
        balancer.set_timeouts(_M.FALLBACK_CONNECT, _M.FALLBACK_READ, _M.FALLBACK_READ)
    elseif state == nil and ctx.flatnet_fallback then
        local t = _M.OVERLAY_TIMEOUT
        balancer.set_more_tries(1)
        balancer.set_timeouts(t, t, t)
    end
    local host, port = addr:match("^(.+):(%d+)$")
    local ok, err = balancer.set_current_peer(host, tonumber(port))
    if not ok then
        ngx.log(ngx.ERR, "flatnet: cannot use upstream ", addr, ": ", err)
        return ngx.exit(502)
    end
end

-- error_page 502 504 (location @flatnet_upstream_error): every try failed, or the
-- request could not be retried. Marks the failed upstreams down and answers with a
-- page that names the service: 503 when nothing could be reached, 504 when it did not
-- answer in time.
function _M.upstream_error()
    local service = ngx.var.flatnet_service or ""
    local addrs = ngx.var.upstream_addr or ""
    local codes = ngx.var.upstream_status or ""
    local tried, last = {}, nil
    local codelist = {}
    for c in codes:gmatch("[^,%s:]+") do
        codelist[#codelist + 1] = tonumber(c)
    end
    local i = 0
    local dict = ngx.shared[_M.DICT]
    for a in addrs:gmatch("[^,%s]+") do
        i = i + 1
        last = codelist[i]
        if a:match("^%d+%.%d+%.%d+%.%d+:%d+$") then
            tried[#tried + 1] = format("%s: %s", a, failure_text(last))
            if last == 502 or last == 504 then
                health.down(dict, a, format("a request failed: %s", failure_text(last)))
            end
        end
    end
    if service == "" then
        service = "(unknown)"
    end
    local what = #tried > 0 and (" Tried " .. table.concat(tried, "; ") .. ".") or ""
    local retry = ""
    local method = ngx.req.get_method()
    if last == 504 and #tried == 1 and (method == "POST" or method == "PATCH" or method == "LOCK") then
        retry = format(" A %s is not sent again through another path: it may already have taken effect.", method)
    end
    if last == 504 then
        return page(504, format("Service %s did not answer in time", service),
                    format("The service %q did not answer in time.%s%s", service, what, retry))
    end
    return page(503, format("Service %s is unavailable", service),
                format("The gateway could not reach the service %q.%s%s Flatnet checks again every second; "
                       .. "try again shortly.", service, what, retry))
end

return _M
