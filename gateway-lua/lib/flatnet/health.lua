-- Upstream health, shared by every worker through the shared dict:
--   "down:ADDR"    = why it is down (a sentence), with a TTL: a checker that stops
--                    refreshing it cannot keep an upstream out for ever;
--   "down_at:ADDR" = when it went down (ngx.now()).
-- Marked down by the active checks (flatnet.feed, every second) and at once by a
-- request that failed on it (flatnet.gateway); marked up only by an active check that
-- connected, and never sooner than MIN_DOWN after it went down. MIN_DOWN equals the
-- upstream keepalive_timeout in conf/nginx.conf: a marked-down upstream gets no
-- requests, so by the time it can be chosen again, every pooled keepalive connection
-- to it has been idle that long and nginx has closed it. No pooled connection outlives
-- a dead mark.
-- One log line when an upstream goes down, one when it comes back (nothing per check).

local ngx = ngx

local _M = { TTL = 10, MIN_DOWN = 1 }

function _M._set_ngx(mock)
    ngx = mock
end

function _M.is_up(dict, addr)
    return dict:get("down:" .. addr) == nil
end

function _M.why(dict, addr)
    return dict:get("down:" .. addr)
end

-- down(dict, addr, why): returns true when this call took it down (and logged it)
function _M.down(dict, addr, why)
    local key = "down:" .. addr
    if dict:add(key, why, _M.TTL) then
        dict:set("down_at:" .. addr, ngx.now(), _M.TTL + _M.MIN_DOWN)
        ngx.log(ngx.WARN, "flatnet: upstream ", addr, " is down: ", why)
        return true
    end
    dict:set(key, why, _M.TTL)  -- still down: refresh the TTL and the reason
    return false
end

-- up(dict, addr): returns true when this call brought it back (and logged it)
function _M.up(dict, addr)
    local key = "down:" .. addr
    if dict:get(key) == nil then
        return false
    end
    local since = dict:get("down_at:" .. addr)
    if since and ngx.now() - since < _M.MIN_DOWN then
        return false  -- pooled connections to it may not have timed out yet
    end
    dict:delete(key)
    dict:delete("down_at:" .. addr)
    ngx.log(ngx.WARN, "flatnet: upstream ", addr, " is back up")
    return true
end

return _M
