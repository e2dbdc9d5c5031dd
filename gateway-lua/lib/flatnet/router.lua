-- Route selection (pure: no ngx). A route table maps a Host (and optional path prefix)
-- to a service and its upstreams; select() picks the route with the longest prefix.
--
-- routes: { { service = "wiki", host = "wiki.office.lan", prefix = "/",
--             upstreams = { { addr = "10.87.2.5:80", kind = "overlay" },
--                           { addr = "192.168.10.12:8080", kind = "gateway" } } }, ... }

local lower = string.lower
local sub = string.sub
local find = string.find
local sort = table.sort
local setmetatable = setmetatable
local ipairs = ipairs

local _M = { _VERSION = "0.1" }
local mt = { __index = _M }

local function normalize_host(host)
    if not host then
        return nil
    end
    host = lower(host)
    local colon = find(host, ":", 1, true)
    if colon then
        host = sub(host, 1, colon - 1)
    end
    if sub(host, -1) == "." then
        host = sub(host, 1, -2)
    end
    return host
end
_M.normalize_host = normalize_host

function _M.new(routes)
    local by_host = {}
    for _, r in ipairs(routes) do
        local h = normalize_host(r.host)
        local list = by_host[h]
        if not list then
            list = {}
            by_host[h] = list
        end
        list[#list + 1] = r
    end
    for _, list in pairs(by_host) do
        -- longest prefix first, so the first match is the most specific
        sort(list, function(a, b) return #(a.prefix or "/") > #(b.prefix or "/") end)
    end
    return setmetatable({ by_host = by_host }, mt)
end

local function prefix_matches(prefix, path)
    if prefix == "/" then
        return true
    end
    if sub(path, 1, #prefix) ~= prefix then
        return false
    end
    -- "/wiki" matches "/wiki", "/wiki/" and "/wiki/x", not "/wikipedia"
    local next_char = sub(path, #prefix + 1, #prefix + 1)
    return next_char == "" or next_char == "/" or sub(prefix, -1) == "/"
end

-- select(host, path) -> route or nil
function _M:select(host, path)
    local list = self.by_host[normalize_host(host) or ""]
    if not list then
        return nil
    end
    path = path or "/"
    for _, r in ipairs(list) do
        if prefix_matches(r.prefix or "/", path) then
            return r
        end
    end
    return nil
end

-- pick(route, healthy, start) -> upstream or nil: the first healthy overlay upstream
-- (round-robin from `start`), else the first healthy gateway fallback (the path that
-- always works: the service's host's own gateway over the LAN).
function _M.pick(route, healthy, start)
    local ups = route.upstreams
    local n = #ups
    for _, kind in ipairs({ "overlay", "gateway" }) do
        for i = 0, n - 1 do
            local u = ups[((start or 0) + i) % n + 1]
            if u.kind == kind and healthy(u.addr) then
                return u
            end
        end
    end
    return nil
end

return _M
