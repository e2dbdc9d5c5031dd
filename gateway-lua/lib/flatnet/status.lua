-- The operator's page at /_flatnet/: hosts, peers with their paths, services and their
-- health, and small live charts of throughput per peer (the page polls /_flatnet/api).

local cjson = require "cjson.safe"
local feed = require "flatnet.feed"
local config = require "flatnet.config"

local ngx = ngx

local _M = {}

function _M.api(opts)
    local dict = ngx.shared[opts.dict or "flatnet"]
    local sock = opts.engine_socket or "/run/flatnet/engine.sock"
    local status = cjson.decode(feed.http_get(sock, "/status") or "null")
    local peers = cjson.decode(feed.http_get(sock, "/peers") or "null")
    local doc = cjson.decode(dict:get("routes") or "{}") or {}
    local services = {}
    for _, r in ipairs(config.validate(doc) or {}) do
        local ups = {}
        for _, u in ipairs(r.upstreams) do
            local why = dict:get("down:" .. u.addr)
            ups[#ups + 1] = { addr = u.addr, kind = u.kind, healthy = why == nil,
                              down_reason = type(why) == "string" and why or nil }
        end
        services[#services + 1] = { service = r.service, host = r.host, prefix = r.prefix, node = r.node,
                                    upstreams = ups }
    end
    -- refused names and routes: the engine's (its catalog, labels, the lighthouse) and
    -- the routes this gateway dropped (config.validate)
    local rejected = {}
    for _, e in ipairs(type(doc.rejected) == "table" and doc.rejected or {}) do
        if type(e) == "table" then
            rejected[#rejected + 1] = { service = e.name, host = e.host, source = e.source or "engine",
                                        reason = e.reason }
        end
    end
    for _, r in ipairs(cjson.decode(dict:get("rejected") or "[]") or {}) do
        rejected[#rejected + 1] = { service = r.service, host = r.host, source = "gateway", reason = r.reason }
    end
    ngx.header["Content-Type"] = "application/json"
    ngx.header["Cache-Control"] = "no-store"
    ngx.say(cjson.encode({ engine = status or cjson.null, peers = peers or cjson.null, services = services,
                           rejected = rejected, feed_error = dict:get("feed_error"), time = ngx.now() }))
end

local PAGE = [[<!doctype html>
<html><head><meta charset="utf-8"><title>Flatnet</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222;background:#fafafa}
h1{font-size:1.5em} h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;background:#fff} td,th{border:1px solid #ddd;padding:.3em .7em;text-align:left}
.ok{color:#087f23}.bad{color:#b00020}.muted{color:#777}
svg{background:#fff;border:1px solid #ddd}
</style></head><body>
<h1>Flatnet &mdash; <span id="node">…</span></h1>
<div id="summary" class="muted">loading…</div>
<h2>Peers</h2><table id="peers"><tr><th>peer</th><th>subnet</th><th>state</th><th>path</th><th>endpoint</th>
<th>sent</th><th>received</th><th>throughput (last minute)</th></tr></table>
<h2>Services</h2><table id="services"><tr><th>service</th><th>host</th><th>node</th><th>upstreams</th></tr></table>
<h2>Refused names and routes</h2><table id="rejected"><tr><th>service</th><th>host</th><th>where</th><th>reason</th></tr></table>
<script>
const hist = {};
function fmt(n){const u=["B","KiB","MiB","GiB","TiB"];let i=0;while(n>=1024&&i<4){n/=1024;i++}return n.toFixed(i?1:0)+" "+u[i]}
function spark(points){const w=160,h=28,max=Math.max(1,...points);
  const d=points.map((v,i)=>(i?"L":"M")+(i*w/59).toFixed(1)+","+(h-1-v/max*(h-2)).toFixed(1)).join(" ");
  return `<svg width="${w}" height="${h}"><path d="${d}" fill="none" stroke="#1565c0" stroke-width="1.5"/></svg>`;}
function esc(s){return String(s??"").replace(/[<>&"]/g,c=>({"<":"&lt;",">":"&gt;","&":"&amp;",'"':"&quot;"}[c]))}
async function tick(){
  try{
    const r=await fetch("/_flatnet/api",{cache:"no-store"}); const d=await r.json();
    const e=d.engine||{}; document.getElementById("node").textContent=e.node||"engine unreachable";
    document.getElementById("summary").textContent=e.node?`subnet ${e.subnet} · ${e.peers_up}/${e.peers} peers up · uptime ${e.uptime} s`+(d.feed_error?` · ${d.feed_error}`:""):(d.feed_error||"");
    let rows="<tr><th>peer</th><th>subnet</th><th>state</th><th>path</th><th>endpoint</th><th>sent</th><th>received</th><th>throughput (last minute)</th></tr>";
    for(const p of (Array.isArray(d.peers)?d.peers:[])){
      const h=hist[p.name]||(hist[p.name]={last:null,pts:Array(60).fill(0)});
      const total=p.tx_bytes+p.rx_bytes; h.pts.push(h.last===null?0:Math.max(0,total-h.last)); h.pts.shift(); h.last=total;
      rows+=`<tr><td>${esc(p.name)}</td><td>${esc(p.subnet||"-")}</td><td class="${p.state==="established"?"ok":"bad"}">${esc(p.state)}</td><td>${esc(p.path)}</td><td>${esc(p.endpoint||"-")}</td><td>${fmt(p.tx_bytes)}</td><td>${fmt(p.rx_bytes)}</td><td>${spark(h.pts)}</td></tr>`;}
    document.getElementById("peers").innerHTML=rows;
    rows="<tr><th>service</th><th>host</th><th>node</th><th>upstreams</th></tr>";
    for(const s of (Array.isArray(d.services)?d.services:[])){
      const ups=s.upstreams.map(u=>`<span class="${u.healthy?"ok":"bad"}">${esc(u.addr)} (${esc(u.kind)}, ${u.healthy?"healthy":"down"+(u.down_reason?": "+esc(u.down_reason):"")})</span>`).join("<br>");
      rows+=`<tr><td>${esc(s.service)}</td><td>${esc(s.host)}${esc(s.prefix&&s.prefix!=="/"?s.prefix:"")}</td><td>${esc(s.node||"")}</td><td>${ups}</td></tr>`;}
    document.getElementById("services").innerHTML=rows;
    rows="<tr><th>service</th><th>host</th><th>where</th><th>reason</th></tr>";
    for(const r of (Array.isArray(d.rejected)?d.rejected:[])){
      rows+=`<tr><td>${esc(r.service)}</td><td>${esc(r.host)}</td><td>${esc(r.source)}</td><td class="bad">${esc(r.reason)}</td></tr>`;}
    document.getElementById("rejected").innerHTML=rows;
  }catch(err){document.getElementById("summary").textContent="status unavailable: "+err}
}
tick(); setInterval(tick,1000);
</script></body></html>]]

function _M.page()
    ngx.header["Content-Type"] = "text/html; charset=utf-8"
    ngx.header["Cache-Control"] = "no-store"
    ngx.say(PAGE)
end

return _M
