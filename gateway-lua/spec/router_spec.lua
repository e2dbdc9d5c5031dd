local router = require "flatnet.router"

local routes = {
    { service = "wiki", host = "wiki.flatnet.lan", prefix = "/",
      upstreams = { { addr = "10.87.2.5:80", kind = "overlay" }, { addr = "192.168.1.12:8080", kind = "gateway" } } },
    { service = "wiki-api", host = "wiki.flatnet.lan", prefix = "/api",
      upstreams = { { addr = "10.87.2.6:8000", kind = "overlay" } } },
    { service = "git", host = "git", prefix = "/",
      upstreams = { { addr = "10.87.1.3:3000", kind = "overlay" }, { addr = "10.87.1.4:3000", kind = "overlay" } } },
}
local r = router.new(routes)
local all_up = function() return true end

return {
    { "selects by host, case and port ignored", function()
        assert(r:select("WIKI.flatnet.lan:8080", "/page").service == "wiki")
        assert(r:select("wiki.flatnet.lan.", "/").service == "wiki")
    end },
    { "longest prefix wins", function()
        assert(r:select("wiki.flatnet.lan", "/api/v1").service == "wiki-api")
        assert(r:select("wiki.flatnet.lan", "/api").service == "wiki-api")
    end },
    { "a prefix matches whole segments only", function()
        assert(r:select("wiki.flatnet.lan", "/apis").service == "wiki")
    end },
    { "unknown host gives nil", function()
        assert(r:select("nope.lan", "/") == nil)
        assert(r:select(nil, "/") == nil)
    end },
    { "pick prefers a healthy overlay upstream", function()
        local route = r:select("wiki.flatnet.lan", "/")
        assert(router.pick(route, all_up, 0).kind == "overlay")
    end },
    { "pick falls back to the peer gateway when the overlay is down", function()
        local route = r:select("wiki.flatnet.lan", "/")
        local up = router.pick(route, function(addr) return addr ~= "10.87.2.5:80" end, 0)
        assert(up.kind == "gateway" and up.addr == "192.168.1.12:8080")
    end },
    { "pick returns nil when nothing is healthy", function()
        assert(router.pick(r:select("git", "/"), function() return false end, 0) == nil)
    end },
    { "pick round-robins over healthy upstreams", function()
        local route = r:select("git", "/")
        local a, b = router.pick(route, all_up, 0).addr, router.pick(route, all_up, 1).addr
        assert(a ~= b)
    end },
}
