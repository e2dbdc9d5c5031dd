-- The one rule for service names and route hosts (docs/gateway.md, "Names"). Pure: no ngx.
--
-- Rules: a service name is one DNS label: 1-63 of a-z, 0-9 and '-', not starting or
-- ending with '-'. A host is 1-253 characters: such labels joined by '.'. Letters are
-- compared in lowercase. Names that are not ASCII are written in punycode (xn--...).
-- The Python twin is engine/proto/names.py; both must give exactly the results and
-- reasons of spec/names_vectors.json.

local type = type
local byte = string.byte
local lower = string.lower
local sub = string.sub
local find = string.find
local format = string.format

local _M = {}

local LABEL_MAX, HOST_MAX = 63, 253
local NOT_ASCII = "not ASCII: write international names in punycode (xn--...)"
local EMPTY_LABEL = "empty label (two dots, or a dot at the start or end)"

local function describe(b)
    if b > 32 and b < 127 then
        return "character '" .. string.char(b) .. "'"
    end
    return format("character 0x%02x", b)
end

-- the first byte outside a-z, 0-9, '-' (s is lowercase ASCII)
local function bad_char(s)
    local i = find(s, "[^a-z0-9%-]")
    if i then
        return describe(byte(s, i)) .. " is not allowed (use a-z, 0-9 and '-')"
    end
    return nil
end

local function common(s)
    if type(s) ~= "string" then
        return nil, "not a string"
    end
    if s == "" then
        return nil, "empty"
    end
    if find(s, "[\128-\255]") then
        return nil, NOT_ASCII
    end
    return lower(s)
end

-- name(s) -> canonical name, or nil, reason
function _M.name(s)
    local name, err = common(s)
    if not name then
        return nil, err
    end
    if #name > LABEL_MAX then
        return nil, format("longer than %d characters", LABEL_MAX)
    end
    local bad = bad_char(name)
    if bad then
        return nil, bad
    end
    if sub(name, 1, 1) == "-" or sub(name, -1) == "-" then
        return nil, "starts or ends with '-'"
    end
    return name
end

-- host(s) -> canonical host, or nil, reason
function _M.host(s)
    local host, err = common(s)
    if not host then
        return nil, err
    end
    if #host > HOST_MAX then
        return nil, format("longer than %d characters", HOST_MAX)
    end
    local start = 1
    while true do
        local dot = find(host, ".", start, true)
        local label = sub(host, start, (dot or 0) - 1)
        if label == "" then
            return nil, EMPTY_LABEL
        end
        if #label > LABEL_MAX then
            return nil, format("a label is longer than %d characters", LABEL_MAX)
        end
        local bad = bad_char(label)
        if bad then
            return nil, bad
        end
        if sub(label, 1, 1) == "-" or sub(label, -1) == "-" then
            return nil, "a label starts or ends with '-'"
        end
        if not dot then
            return host
        end
        start = dot + 1
    end
end

return _M
