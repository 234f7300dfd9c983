"""The public status page: the /status.json document (relay.status_data) rendered as one self-contained
HTML page (inline CSS and a few lines of script: no CDN, nothing from the internet). Pure: dict in, bytes out.

The script re-fetches /status every `refresh` seconds and swaps the page's content in place (one render
path, the server's); without script the page is simply not refreshed.
"""

from __future__ import annotations

import html
import math
import time
from typing import Any

__all__ = ["COUNTING", "render_status"]

COUNTING = (
    "Availability is the share of ok outcomes among health probes of every account and real requests. "
    "Failures on the relay's side count (upstream errors, timeouts, no account available, every account "
    "rate limited); the client's own errors (a bad request, an unknown model, a key's rate limit or "
    "balance) do not."
)

_STATE_LABEL = {"operational": "Operational", "degraded": "Degraded", "outage": "Outage"}

_CSS = """
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2430;background:#f5f7fa}
main{max-width:880px;margin:0 auto;padding:24px 16px 40px}
h1{font-size:1.6em;margin:0 0 4px}
.note{margin:0 0 16px;color:#556070}
.banner{display:flex;flex-wrap:wrap;justify-content:space-between;gap:4px 16px;align-items:center;
  padding:14px 18px;border-radius:8px;color:#fff;font-size:1.1em;margin:16px 0 24px}
.banner small{font-size:.8em;opacity:.9}
.banner-operational{background:#2b8a3e}.banner-degraded{background:#c77700}.banner-outage{background:#c92a2a}
.row{background:#fff;border:1px solid #dfe3e8;border-radius:8px;padding:14px 16px;margin:0 0 12px}
.head{display:flex;justify-content:space-between;gap:8px;align-items:baseline}
.head h2{font-size:1.05em;margin:0;overflow-wrap:anywhere}
.state{font-size:.9em;font-weight:600;white-space:nowrap}
.state-operational{color:#2b8a3e}.state-degraded{color:#c77700}.state-outage{color:#c92a2a}
.bars{display:flex;gap:1px;height:34px;margin:10px 0 4px}
.bar{flex:1 1 0;min-width:0;border-radius:1px;position:relative}
.bar-ok{background:#2fb344}.bar-warn{background:#f59f00}.bar-bad{background:#e03131}.bar-none{background:#ced4da}
.bar:hover,.bar:focus{outline:2px solid #1d2430;outline-offset:1px}
.axis{display:flex;justify-content:space-between;font-size:.8em;color:#6b7686}
.figures{display:flex;flex-wrap:wrap;gap:4px 20px;margin:8px 0 0;font-size:.9em}
.figures div{display:flex;gap:6px}.figures dt{color:#6b7686}.figures dd{margin:0;font-weight:600}
.out{font-size:.9em;color:#556070;margin:6px 0 0}
footer{margin-top:24px;font-size:.85em;color:#556070}
"""

# Re-fetch the page and swap <main>: the same markup the server renders, no second renderer to drift.
_JS = """
(function(){
  var main=document.getElementById('status'); if(!main||!window.fetch||!window.DOMParser) return;
  var every=Math.max(2,parseInt(main.getAttribute('data-refresh'),10)||30)*1000;
  function tick(){
    fetch(location.pathname,{cache:'no-store'}).then(function(r){return r.ok?r.text():null}).then(function(t){
      if(!t) return;
      var next=new DOMParser().parseFromString(t,'text/html').getElementById('status');
      if(next){main.innerHTML=next.innerHTML;}
    }).catch(function(){}).then(function(){setTimeout(tick,every)});
  }
  setTimeout(tick,every);
})();
"""


def _pct(share: float | None) -> str:
    if share is None:
        return "—"
    if share >= 1:
        return "100%"
    return f"{math.floor(share * 10000) / 100:.2f}%"  # floored: 99.999 % is not shown as 100 %


def _bar_class(share: float | None) -> str:
    if share is None:
        return "bar-none"
    if share >= 0.99:
        return "bar-ok"
    return "bar-warn" if share >= 0.5 else "bar-bad"


def _utc(t: float, seconds: bool = False) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M", time.gmtime(t))


def _span(seconds: float) -> str:
    for unit, n in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= 2 * n:
            v = seconds / n
            return f"{v:.0f} {unit}s" if v == int(v) else f"{v:.1f} {unit}s"
    return f"{seconds:.0f} seconds"


def _bars(name: str, bars: list[dict[str, Any]], width: int) -> str:
    exact = width < 60  # short buckets: the seconds matter
    out = []
    for b in bars:
        share = b["availability"]
        n = b["ok"] + b["failed"]
        figure = "no data" if share is None else f"{_pct(share)} ok of {n}"
        tip = f"{_utc(b['start'], exact)} – {_utc(b['end'], exact)} UTC: {figure}"
        out.append(
            f"<span class='bar {_bar_class(share)}' title='{html.escape(tip)}' "
            f"aria-label='{html.escape(tip)}' tabindex='0'></span>"
        )
    label = html.escape(f"Availability of {name}, one bar per {_span(width)}")
    return f"<div class='bars' role='group' aria-label='{label}'>{''.join(out)}</div>"


def _row(item: dict[str, Any], width: int, kind: str) -> str:
    name = item["name"]
    state = item["state"]
    figures = "".join(
        f"<div><dt>{w.replace('h', ' h').replace('d', ' d')}</dt><dd data-window='{w}'>{_pct(v)}</dd></div>"
        for w, v in item["uptime"].items()
    )
    latency = "—" if item["latency_ms"] is None else f"{item['latency_ms']:.0f} ms"
    extra = ""
    if item.get("channels"):
        extra = f"<p class='out'>Channels: {html.escape(', '.join(item['channels']))}</p>"
    if item.get("accounts_out"):
        accounts = ", ".join(f"account {a['index']}: {a['state']}" for a in item["accounts_out"])
        extra += f"<p class='out'>Out of rotation: {html.escape(accounts)}</p>"
    return (
        f"<article class='row' data-{kind}='{html.escape(name)}' data-state='{state}'>"
        f"<div class='head'><h2>{html.escape(name)}</h2>"
        f"<span class='state state-{state}'>{_STATE_LABEL[state]}</span></div>"
        f"{_bars(name, item['bars'], width)}"
        f"<div class='axis'><span>{_span(width * len(item['bars']))} ago</span><span>now</span></div>"
        f"<dl class='figures'>{figures}<div><dt>Latency</dt><dd data-latency>{latency}</dd></div></dl>{extra}"
        "</article>"
    )


def render_status(doc: dict[str, Any], refresh: int = 30) -> bytes:
    """The page for a /status.json document; `refresh`: seconds between two in-place refreshes."""
    title = html.escape(doc["title"])
    width = int(doc["bucket_seconds"])
    note = f"<p class='note'>{html.escape(doc['note'])}</p>" if doc.get("note") else ""
    models = "".join(_row(m, width, "model") for m in doc["models"]) or "<p>No models are configured.</p>"
    channels = ""
    if "channels" in doc:
        channels = "<h2>Channels</h2>" + "".join(_row(c, width, "channel") for c in doc["channels"])
    updated = _utc(doc["updated_at"], seconds=True)
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{title}</title><style>{_CSS}</style></head><body>"
        f"<main id='status' data-refresh='{refresh}'><h1>{title}</h1>{note}"
        f"<section class='banner banner-{doc['state']}' role='status'><strong id='banner'>{doc['banner']}</strong>"
        f"<small>Updated <time datetime='{updated.replace(' ', 'T')}Z'>{updated} UTC</time></small></section>"
        f"<section class='models'>{models}</section>{channels}"
        f"<footer><p>{COUNTING}</p><p>Uptime over 24 hours, 7, 30 and 90 days; latency: the mean time to the "
        f"first byte over the last {_span(2 * width)}. Machine-readable: <a href='status.json'>status.json</a>."
        "</p></footer></main>"
        f"<script>{_JS}</script></body></html>"
    )
    return page.encode()
