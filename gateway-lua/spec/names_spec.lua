-- The shared vectors (spec/names_vectors.json) against names.lua: the same file the
-- Python side (engine/proto/names.py) is tested with.
local names = require "flatnet.names"
local cjson = require "cjson.safe"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local f = assert(io.open(here .. "/names_vectors.json"))
local doc = assert(cjson.decode(f:read("*a")))
f:close()

local cases = {}
for i, v in ipairs(doc.canonical) do
    cases[#cases + 1] = { string.format("vector %d (%s %q)", i, v.kind, v.input:sub(1, 20)), function()
        local out, reason = names[v.kind](v.input)
        if v.ok then
            assert(out == v.ok, "got " .. tostring(out) .. " / " .. tostring(reason))
        else
            assert(out == nil and reason == v.reason, "got " .. tostring(out) .. " / " .. tostring(reason))
        end
    end }
end
cases[#cases + 1] = { "non-strings are refused", function()
    assert(select(2, names.name(nil)) == "not a string" and select(2, names.host({})) == "not a string")
end }
return cases
