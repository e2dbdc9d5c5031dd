local config = require "flatnet.config"

local function err_of(doc)
    local routes, err = config.validate(doc)
    assert(routes == nil, "expected an error")
    return err
end

return {
    { "a valid table passes with defaults filled in", function()
        local routes = assert(config.validate({ routes = { { service = "wiki", host = "wiki",
            upstreams = { { addr = "10.87.2.5:80" } } } } }))
        assert(routes[1].prefix == "/" and routes[1].upstreams[1].kind == "overlay")
    end },
    { "errors name the path of the bad value", function()
        local err = err_of({ routes = { { service = "w", host = "w", upstreams = { { addr = "10.87.2.5" } } } } })
        assert(err:find("routes%[1%]%.upstreams%[1%]%.addr"), err)
    end },
    { "bad octet and port", function()
        assert(err_of({ routes = { { service = "w", host = "w", upstreams = { { addr = "10.87.2.300:80" } } } } })
            :find("not an IPv4"))
        assert(err_of({ routes = { { service = "w", host = "w", upstreams = { { addr = "10.87.2.3:0" } } } } })
            :find("1%-65535"))
    end },
    { "missing pieces", function()
        assert(err_of({}):find("routes"))
        assert(err_of({ routes = { { host = "w", upstreams = {} } } }):find("service"))
        assert(err_of({ routes = { { service = "w", host = "w", upstreams = {} } } }):find("upstreams"))
        assert(err_of({ routes = { { service = "w", host = "w", prefix = "x",
            upstreams = { { addr = "1.2.3.4:5" } } } } }):find("prefix"))
        assert(err_of({ routes = { { service = "w", host = "bad host", upstreams = { { addr = "1.2.3.4:5" } } } } })
            :find("host"))
    end },
}
