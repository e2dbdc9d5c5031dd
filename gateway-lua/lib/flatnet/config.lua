-- Validation of a route document (JSON decoded) with path-qualified errors, as
-- lua-resty-healthcheck's fill_in_settings does: "routes[2].upstreams[1].addr: ...".
--
-- Rules: each route stands alone. A bad route is dropped and reported (its index,
-- service, host and the reason); the good ones are kept, so one bad name never
-- freezes the table. Names and hosts follow the one rule of flatnet.names.

local type = type
local ipairs = ipairs
local tostring = tostring
local match = string.match
local format = string.format
local names = require "flatnet.names"

local _M = {}

local function fail(ctx, msg)
    return nil, ctx .. ": " .. msg
end

local function check_addr(addr, ctx)
    if type(addr) ~= "string" then
        return fail(ctx, "expected \"IP:PORT\"")
    end
    local a, b, c, d, port = match(addr, "^(%d+)%.(%d+)%.(%d+)%.(%d+):(%d+)$")
    if not a then
        return fail(ctx, format("%q is not IP:PORT", addr))
    end
    for _, octet in ipairs({ a, b, c, d }) do
        if tonumber(octet) > 255 then
            return fail(ctx, format("%q is not an IPv4 address", addr))
        end
    end
    port = tonumber(port)
    if port < 1 or port > 65535 then
        return fail(ctx, format("port %d is not 1-65535", port))
    end
    return true
end

local MAX_ROUTES = 4096
local MAX_UPSTREAMS = 64

-- one route -> the route (defaults filled in, host in lowercase) or nil, err
local function check_route(r, ctx)
    if type(r) ~= "table" then
        return fail(ctx, "expected an object")
    end
    local service, serr = names.name(r.service)
    if not service then
        return fail(ctx .. ".service", serr)
    end
    local host, herr = names.host(r.host)
    if not host then
        return fail(ctx .. ".host", herr)
    end
    local prefix = r.prefix or "/"
    if type(prefix) ~= "string" or prefix:sub(1, 1) ~= "/" then
        return fail(ctx .. ".prefix", "must start with /")
    end
    if type(r.upstreams) ~= "table" or #r.upstreams == 0 then
        return fail(ctx .. ".upstreams", "at least one upstream")
    end
    if #r.upstreams > MAX_UPSTREAMS then
        return fail(ctx .. ".upstreams", format("at most %d upstreams", MAX_UPSTREAMS))
    end
    local ups = {}
    for j, u in ipairs(r.upstreams) do
        local uctx = format("%s.upstreams[%d]", ctx, j)
        if type(u) ~= "table" then
            return fail(uctx, "expected an object")
        end
        local ok, err = check_addr(u.addr, uctx .. ".addr")
        if not ok then
            return nil, err
        end
        local kind = u.kind or "overlay"
        if kind ~= "overlay" and kind ~= "gateway" then
            return fail(uctx .. ".kind", "\"overlay\" or \"gateway\"")
        end
        ups[j] = { addr = u.addr, kind = kind }
    end
    local node = type(r.node) == "string" and r.node or nil
    return { service = service, host = host, prefix = prefix, upstreams = ups, node = node }
end

local function label(v)
    return type(v) == "string" and v:sub(1, 253) or nil
end

-- validate(doc) -> routes, rejected; or nil, err when doc is not a route document.
-- rejected: { { index, service, host, reason }, ... } (service and host as sent, for
-- the operator to find the route; reason with the path of the bad value).
function _M.validate(doc)
    if type(doc) ~= "table" or type(doc.routes) ~= "table" then
        return fail("routes", "missing list")
    end
    local out, rejected = {}, {}
    for i, r in ipairs(doc.routes) do
        local ctx = format("routes[%d]", i)
        local route, err
        if i > MAX_ROUTES then
            err = format("%s: more than %d routes", ctx, MAX_ROUTES)
        else
            route, err = check_route(r, ctx)
        end
        if route then
            out[#out + 1] = route
        else
            local t = type(r) == "table" and r or {}
            rejected[#rejected + 1] = { index = i, service = label(t.service), host = label(t.host),
                                        reason = tostring(err) }
        end
    end
    return out, rejected
end

return _M
