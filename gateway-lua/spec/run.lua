-- A small spec runner for the pure modules (router, config): `luajit spec/run.lua`.
-- Each spec file returns a list of {name, fn}; a failing assert fails that case.
-- Prints one line per failure and a closing "N passed, N failed" line.
local here = arg[0]:match("^(.*)/spec/run%.lua$") or "."
package.path = here .. "/lib/?.lua;" .. package.path

local files = { "router_spec", "config_spec", "gateway_spec", "names_spec", "health_spec" }
local passed, failed = 0, 0
for _, f in ipairs(files) do
    local cases = dofile(here .. "/spec/" .. f .. ".lua")
    for _, case in ipairs(cases) do
        local ok, err = pcall(case[2])
        if ok then
            passed = passed + 1
        else
            failed = failed + 1
            print(string.format("FAILED %s: %s: %s", f, case[1], tostring(err)))
        end
    end
end
print(string.format("%d passed, %d failed", passed, failed))
os.exit(failed == 0 and 0 or 1)
