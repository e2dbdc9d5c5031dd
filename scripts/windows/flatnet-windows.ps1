# Flatnet on Windows with WSL2. NOT TESTED on this platform: review before use.
# -Route   : route 10.87.0.0/16 to the WSL2 instance (run at logon; WSL2's address changes)
# -Gateway : start OpenResty with the Flatnet gateway config
param(
    [switch]$Route,
    [switch]$Gateway,
    [string]$Network = "10.87.0.0",
    [string]$Mask = "255.255.0.0",
    [string]$OpenResty = "C:\openresty",
    [string]$Listen = "0.0.0.0:80"
)
$ErrorActionPreference = "Stop"

if ($Route) {
    $wslIp = (wsl hostname -I).Trim().Split(" ")[0]
    if (-not $wslIp) { throw "cannot find the WSL2 address: is the WSL2 instance running?" }
    route delete $Network 2>$null | Out-Null
    route add $Network mask $Mask $wslIp | Out-Null
    Write-Output "route $Network/$Mask via WSL2 $wslIp"
}

if ($Gateway) {
    $prefix = Join-Path $OpenResty "flatnet"
    New-Item -ItemType Directory -Force -Path $prefix | Out-Null
    $conf = Get-Content (Join-Path $PSScriptRoot "..\..\gateway-lua\conf\nginx.conf") -Raw
    $conf = $conf.Replace("{{LOAD_MODULES}}", "").Replace("{{USER}}", "").Replace("{{PREFIX}}", $prefix)
    $conf = $conf.Replace("{{LUA_PATH}}", (Resolve-Path (Join-Path $PSScriptRoot "..\..\gateway-lua\lib")))
    $conf = $conf.Replace("{{LISTEN}}", $Listen).Replace("{{TLS}}", "").Replace("{{ENGINE_SOCKET}}", "engine.sock")
    Set-Content -Path (Join-Path $prefix "nginx.conf") -Value $conf
    Copy-Item (Join-Path $PSScriptRoot "..\..\gateway-lua\conf\flatnet-locations.conf") $prefix
    & (Join-Path $OpenResty "nginx.exe") -p $prefix -c (Join-Path $prefix "nginx.conf")
    Write-Output "OpenResty gateway started on $Listen (prefix $prefix)"
}
