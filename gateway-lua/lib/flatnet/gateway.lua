-- The request adapter: the only module that reads ngx.* on the request path.
-- exec() picks the route (router.select, pure), a healthy upstream (router.pick), and
-- hands nginx the upstream address in $flatnet_upstream; or answers 502/503 itself
-- with a page that names the service.
--
-- The route table lives in the shared dict as JSON under "routes", with a version
-- under "routes_version"; each worker rebuilds its router only when the version moves,
-- so a change takes effect at once, without reload.

local router = require "flatnet.router"
local config = require "flatnet.config"
local cjson = require "cjson.safe"

local ngx = ngx
local format = string.format
local gsub = string.gsub

local _M = { DICT = "flatnet" }

local cached_version, cached_router = nil, router.new({})
local rr = 0

-- tests swap the ngx dependency (Kong's _set_ngx)
function _M._set_ngx(mock)
    ngx = mock
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
    local up = router.pick(route, function(addr)
        return dict:get("down:" .. addr) == nil
    end, rr)
    if up and hopped and up.kind == "gateway" then
        up = nil
    end
    if not up then
        return page(503, format("Service %s is unavailable", route.service),
                    format("The service %q has no healthy upstream right now. Flatnet checks again every "
                           .. "second; try again shortly.", route.service))
    end
    ngx.var.flatnet_upstream = up.addr
    ngx.ctx.flatnet_upstream = up.addr
    ngx.var.flatnet_service = route.service
    ngx.var.flatnet_path = up.kind
    if up.kind == "gateway" then
        ngx.req.set_header("X-Flatnet-Hop", "1")
    end
end

-- balancer_by_lua: hand nginx the chosen upstream, so the upstream block's keepalive
-- pool reuses connections (proxy_pass to a variable would open one per request)
function _M.balance()
    local balancer = require "ngx.balancer"
    local host, port = ngx.ctx.flatnet_upstream:match("^(.+):(%d+)$")
    local ok, err = balancer.set_current_peer(host, tonumber(port))
    if not ok then
        ngx.log(ngx.ERR, "flatnet: cannot use upstream ", ngx.ctx.flatnet_upstream, ": ", err)
        return ngx.exit(502)
    end
end

return _M
