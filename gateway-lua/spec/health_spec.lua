-- flatnet.health and the escalation in flatnet.gateway (balance, upstream_error) with a
-- mock ngx: one log line per transition, a minimum time down, the retry through the
-- peer gateway, and error pages that name the service.
local cjson = require "cjson.safe"

local function dict(store)
    return {
        get = function(_, k) return store[k] end,
        set = function(_, k, v) store[k] = v return true end,
        add = function(_, k, v) if store[k] ~= nil then return false end store[k] = v return true end,
        delete = function(_, k) store[k] = nil end,
    }
end

local function mock(store)
    local m = { now_value = 100, logs = {}, WARN = "warn", ERR = "err", var = {}, ctx = {}, header = {},
                req = { get_method = function() return "GET" end, set_header = function() end } }
    m.shared = { flatnet = dict(store) }
    m.now = function() return m.now_value end
    m.log = function(_, ...) m.logs[#m.logs + 1] = table.concat({ ... }) end
    m.say = function(s) m.said = s end
    m.exit = function(code) m.exited = code end
    return m
end

local function fresh(name)
    package.loaded[name] = nil
    return require(name)
end

local routes = cjson.encode({ routes = {
    { service = "wiki", host = "wiki", prefix = "/", upstreams = {
        { addr = "10.87.2.5:80", kind = "overlay" }, { addr = "192.0.2.2:8080", kind = "gateway" } } },
    { service = "notes", host = "notes", prefix = "/", upstreams = { { addr = "10.87.1.5:80", kind = "overlay" } } } } })

return {
    { "down and up: one log line each, never up before MIN_DOWN", function()
        local store = {}
        local m = mock(store)
        local h = fresh("flatnet.health")
        h._set_ngx(m)
        local d = m.shared.flatnet
        assert(h.down(d, "10.87.2.5:80", "connect timed out") == true)
        assert(h.down(d, "10.87.2.5:80", "connect timed out") == false)
        assert(#m.logs == 1 and m.logs[1]:find("10.87.2.5:80 is down: connect timed out", 1, true))
        assert(not h.is_up(d, "10.87.2.5:80"))
        m.now_value = 100 + h.MIN_DOWN / 2
        assert(h.up(d, "10.87.2.5:80") == false and not h.is_up(d, "10.87.2.5:80"))
        m.now_value = 100 + h.MIN_DOWN
        assert(h.up(d, "10.87.2.5:80") == true and h.is_up(d, "10.87.2.5:80"))
        assert(h.up(d, "10.87.2.5:80") == false)
        assert(#m.logs == 2 and m.logs[2]:find("10.87.2.5:80 is back up", 1, true))
    end },
    { "a remote service: the first try gets the overlay bound and one more try", function()
        local m = mock({ routes = routes, routes_version = 1 })
        m.var = { host = "wiki", uri = "/" }
        local hop
        m.req.set_header = function(k, v) hop = k .. "=" .. v end
        local calls = {}
        package.loaded["ngx.balancer"] = {
            get_last_failure = function() return nil end,
            set_more_tries = function(n) calls[#calls + 1] = "tries" .. n end,
            set_timeouts = function(c, s, r) calls[#calls + 1] = string.format("t%g,%g,%g", c, s, r) end,
            set_current_peer = function(h, p) calls[#calls + 1] = h .. ":" .. p return true end,
        }
        local gw = fresh("flatnet.gateway")
        gw._set_ngx(m)
        gw.configure({ overlay_timeout = 2 })
        gw.exec()
        assert(m.var.flatnet_path == "overlay" and m.ctx.flatnet_fallback == "192.0.2.2:8080")
        assert(hop == "X-Flatnet-Hop=1")
        gw.balance()
        assert(table.concat(calls, " ") == "tries1 t2,2,2 10.87.2.5:80", table.concat(calls, " "))
        -- nginx comes back after the overlay try failed: the peer gateway, overlay marked down
        calls = {}
        package.loaded["ngx.balancer"].get_last_failure = function() return "failed", 504 end
        gw.balance()
        assert(table.concat(calls, " ") == "t3,60,60 192.0.2.2:8080", table.concat(calls, " "))
        assert(m.var.flatnet_path == "gateway" and m.var.flatnet_upstream == "192.0.2.2:8080")
        assert(m.shared.flatnet:get("down:10.87.2.5:80"):find("no answer in time", 1, true))
        package.loaded["ngx.balancer"] = nil
    end },
    { "a local service: no retry, nginx's usual bounds", function()
        local m = mock({ routes = routes, routes_version = 1 })
        m.var = { host = "notes", uri = "/" }
        local calls = {}
        package.loaded["ngx.balancer"] = {
            get_last_failure = function() return nil end,
            set_more_tries = function(n) calls[#calls + 1] = "tries" .. n end,
            set_timeouts = function() calls[#calls + 1] = "timeouts" end,
            set_current_peer = function(h, p) calls[#calls + 1] = h .. ":" .. p return true end,
        }
        local gw = fresh("flatnet.gateway")
        gw._set_ngx(m)
        gw.exec()
        gw.balance()
        assert(table.concat(calls, " ") == "10.87.1.5:80", table.concat(calls, " "))
        package.loaded["ngx.balancer"] = nil
    end },
    { "every try failed: a 503 page naming the service and what failed; the upstream is down", function()
        local m = mock({})
        m.var = { flatnet_service = "notes", upstream_addr = "10.87.1.5:80", upstream_status = "502" }
        local gw = fresh("flatnet.gateway")
        gw._set_ngx(m)
        gw.upstream_error()
        assert(m.exited == 503 and m.status == 503)
        assert(m.said:find("Service notes is unavailable", 1, true) and m.said:find("10.87.1.5:80: connection failed", 1, true))
        assert(m.shared.flatnet:get("down:10.87.1.5:80"))
    end },
    { "a POST that timed out: 504 naming the service, and why it was not retried", function()
        local m = mock({})
        m.var = { flatnet_service = "wiki", upstream_addr = "10.87.2.5:80", upstream_status = "504" }
        m.req.get_method = function() return "POST" end
        local gw = fresh("flatnet.gateway")
        gw._set_ngx(m)
        gw.upstream_error()
        assert(m.exited == 504 and m.said:find("Service wiki did not answer in time", 1, true))
        assert(m.said:find("A POST is not sent again", 1, true))
    end },
}
