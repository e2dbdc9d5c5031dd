-- Validation of a route document (JSON decoded) with path-qualified errors, as
-- lua-resty-healthcheck's fill_in_settings does: "routes[2].upstreams[1].addr: ...".

local type = type
local ipairs = ipairs
local match = string.match
local format = string.format

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

-- validate(doc) -> routes or nil, err
function _M.validate(doc)
    if type(doc) ~= "table" or type(doc.routes) ~= "table" then
        return fail("routes", "missing list")
    end
    local out = {}
    for i, r in ipairs(doc.routes) do
        local ctx = format("routes[%d]", i)
        if type(r) ~= "table" then
            return fail(ctx, "expected an object")
        end
        if type(r.service) ~= "string" or r.service == "" then
            return fail(ctx .. ".service", "missing name")
        end
        if type(r.host) ~= "string" or not match(r.host, "^[%w%.%-]+$") then
            return fail(ctx .. ".host", "expected a host name")
        end
        local prefix = r.prefix or "/"
        if type(prefix) ~= "string" or prefix:sub(1, 1) ~= "/" then
            return fail(ctx .. ".prefix", "must start with /")
        end
        if type(r.upstreams) ~= "table" or #r.upstreams == 0 then
            return fail(ctx .. ".upstreams", "at least one upstream")
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
        out[i] = { service = r.service, host = r.host, prefix = prefix, upstreams = ups, node = r.node }
    end
    return out
end

return _M
