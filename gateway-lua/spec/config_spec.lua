local config = require "flatnet.config"

local UP = { { addr = "10.87.2.5:80" } }

-- the reason a one-route table is rejected with (the table itself stays valid)
local function err_of(route)
    local routes, rejected = config.validate({ routes = { route } })
    assert(routes and #routes == 0 and #rejected == 1, "expected the route to be dropped")
    return rejected[1].reason
end

return {
    { "a valid table passes with defaults filled in", function()
        local routes, rejected = config.validate({ routes = { { service = "wiki", host = "Wiki",
            upstreams = UP } } })
        assert(routes[1].prefix == "/" and routes[1].upstreams[1].kind == "overlay" and #rejected == 0)
        assert(routes[1].host == "wiki", "hosts are kept in lowercase")
    end },
    { "errors name the path of the bad value", function()
        local err = err_of({ service = "w", host = "w", upstreams = { { addr = "10.87.2.5" } } })
        assert(err:find("routes%[1%]%.upstreams%[1%]%.addr"), err)
    end },
    { "bad octet and port", function()
        assert(err_of({ service = "w", host = "w", upstreams = { { addr = "10.87.2.300:80" } } }):find("not an IPv4"))
        assert(err_of({ service = "w", host = "w", upstreams = { { addr = "10.87.2.3:0" } } }):find("1%-65535"))
    end },
    { "missing pieces", function()
        assert(config.validate({}) == nil)
        assert(select(2, config.validate({})):find("routes"))
        assert(err_of({ host = "w", upstreams = UP }):find("service"))
        assert(err_of({ service = "w", host = "w", upstreams = {} }):find("upstreams"))
        assert(err_of({ service = "w", host = "w", prefix = "x", upstreams = UP }):find("prefix"))
        assert(err_of({ service = "w", host = "bad host", upstreams = UP }):find("host"))
        assert(err_of("junk"):find("expected an object"))
    end },
    { "one bad route is dropped, the others kept (issue 13 item 6)", function()
        local routes, rejected = config.validate({ routes = {
            { service = "wiki", host = "wiki.office.lan", upstreams = UP },
            { service = "cafe", host = "café.office.lan", upstreams = UP },
            { service = "my_app", host = "my_app", upstreams = UP },
            { service = "notes", host = "notes", upstreams = UP },
        } })
        assert(#routes == 2 and routes[1].service == "wiki" and routes[2].service == "notes")
        assert(#rejected == 2)
        assert(rejected[1].index == 2 and rejected[1].host == "café.office.lan", rejected[1].reason)
        assert(rejected[1].reason == "routes[2].host: not ASCII: write international names in punycode (xn--...)",
               rejected[1].reason)
        assert(rejected[2].service == "my_app"
               and rejected[2].reason == "routes[3].service: character '_' is not allowed (use a-z, 0-9 and '-')",
               rejected[2].reason)
    end },
    { "random route tables: never an error, every route kept or dropped with a reason", function()
        math.randomseed(13)
        local pieces = { "wiki", "é", "_", ".", "-", "A", "", "..", ":80", "\0", "x", "%", "10.0.0.1:80", "/" }
        local function junk()
            local t = {}
            for _ = 1, math.random(0, 6) do t[#t + 1] = pieces[math.random(#pieces)] end
            return table.concat(t)
        end
        local values = { function() return junk() end, function() return math.random(100) end,
                         function() return {} end, function() return nil end, function() return true end }
        local function any() return values[math.random(#values)]() end
        for _ = 1, 2000 do
            local doc = { routes = {} }
            for i = 1, math.random(0, 5) do
                doc.routes[i] = { service = any(), host = any(), prefix = math.random(2) == 1 and junk() or nil,
                                  upstreams = { { addr = math.random(2) == 1 and "10.0.0.1:80" or any(),
                                                  kind = math.random(3) == 1 and junk() or nil } } }
            end
            local ok, routes, rejected = pcall(config.validate, doc)
            assert(ok, routes)
            assert(#routes + #rejected == #doc.routes)
            for _, r in ipairs(rejected) do assert(type(r.reason) == "string" and r.reason ~= "") end
        end
    end },
}
