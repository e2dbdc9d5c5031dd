-- gateway.exec() with a mock ngx (Kong's _set_ngx pattern): the decisions it takes.
local cjson = require "cjson.safe"

local function mock(host, uri, headers, dict_values)
    local store = dict_values or {}
    local m = {
        status = nil, said = nil, exited = nil, req_headers = {},
        var = { host = host, uri = uri, flatnet_client = "192.0.2.200" },
        header = {}, ctx = {}, ERR = "err",
        shared = { flatnet = {
            get = function(_, k) return store[k] end,
        } },
        req = {}, log = function() end,
    }
    for k, v in pairs(headers or {}) do m.var["http_" .. k] = v end
    m.say = function(s) m.said = s end
    m.exit = function(code) m.exited = code end
    m.req.set_header = function(k, v) m.req_headers[k] = v end
    return m
end

local routes = cjson.encode({ routes = {
    { service = "wiki", host = "wiki", prefix = "/", upstreams = {
        { addr = "10.87.2.5:80", kind = "overlay" }, { addr = "192.0.2.2:8080", kind = "gateway" } } } } })

local function run(m)
    package.loaded["flatnet.gateway"] = nil
    local gw = require "flatnet.gateway"
    gw._set_ngx(m)
    gw.exec()
    return m
end

return {
    { "an unknown host gets a 502 naming it", function()
        local m = run(mock("nope", "/", {}, { routes = routes, routes_version = 1 }))
        assert(m.exited == 502 and m.said:find("nope", 1, true))
    end },
    { "a healthy overlay upstream is chosen", function()
        local m = run(mock("wiki", "/x", {}, { routes = routes, routes_version = 1 }))
        assert(m.exited == nil and m.var.flatnet_upstream == "10.87.2.5:80" and m.var.flatnet_path == "overlay")
    end },
    { "the overlay down: the peer gateway, marked as a hop", function()
        local m = run(mock("wiki", "/", {}, { routes = routes, routes_version = 1, ["down:10.87.2.5:80"] = true }))
        assert(m.var.flatnet_path == "gateway" and m.req_headers["X-Flatnet-Hop"] == "1")
    end },
    { "a hopped request is never passed to another gateway: 503 naming the service", function()
        local m = run(mock("wiki", "/", { x_flatnet_hop = "1", x_real_ip = "192.0.2.77" },
                           { routes = routes, routes_version = 1, ["down:10.87.2.5:80"] = true }))
        assert(m.exited == 503 and m.said:find("wiki", 1, true))
        assert(m.var.flatnet_client == "192.0.2.77")  -- the LAN client's address is kept
    end },
}
