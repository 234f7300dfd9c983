"""The admin API's channel routes (/admin/channels...): list, add, change, delete, and turn accounts on/off.

Same guard as the rest of /admin (relay/web_admin.py's admin_guard). The rules are relay/channels.py's.
Keys are write-only: an answer shows each account as {index, prefix, enabled}, never a key. After each write
this process's channels are refreshed before the answer goes out (the change holds for its very next
request); the other processes see it within their poll interval (0.25 s).
"""

from __future__ import annotations

from aiohttp import web

from .channel_watch import ChannelWatch
from .channels import ChannelService
from .web_admin import Handler, admin_guard, json_answer, read_body

__all__ = ["add_routes"]


def add_routes(app: web.Application, admin_token: str | None, service: ChannelService, watch: ChannelWatch) -> None:
    guarded = admin_guard(admin_token)

    async def list_(request: web.Request) -> web.StreamResponse:
        rows = await service.list_all()
        return json_answer({"object": "list", "data": [service.view(r) for r in rows]})

    async def create(request: web.Request) -> web.StreamResponse:
        row = await service.create(await read_body(request))
        await watch.refresh()
        return json_answer(service.view(row), status=201)

    async def get(request: web.Request) -> web.StreamResponse:
        return json_answer(service.view(await service.get(request.match_info["name"])))

    async def patch(request: web.Request) -> web.StreamResponse:
        row = await service.update(request.match_info["name"], await read_body(request))
        await watch.refresh()
        return json_answer(service.view(row))

    async def delete(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        await service.delete(name)
        await watch.refresh()
        return json_answer({"object": "channel.deleted", "name": name, "deleted": True})

    def account(enabled: bool) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            await read_body(request, required=False)
            name, index = request.match_info["name"], request.match_info["index"]
            row = await service.set_account(name, index, enabled)
            await watch.refresh()
            if enabled:  # the operator's word also ends an out of rotation the health checks decided
                for acc in watch.router.accounts:
                    if acc.channel.name == name and str(acc.index) == index:
                        watch.router.bring_back(acc, "enabled by the operator")
            return json_answer(service.view(row))

        return handle

    r = app.router
    r.add_get("/admin/channels", guarded(list_), allow_head=False)
    r.add_post("/admin/channels", guarded(create))
    r.add_get("/admin/channels/{name}", guarded(get), allow_head=False)
    r.add_patch("/admin/channels/{name}", guarded(patch))
    r.add_delete("/admin/channels/{name}", guarded(delete))
    r.add_post("/admin/channels/{name}/accounts/{index}/enable", guarded(account(True)))
    r.add_post("/admin/channels/{name}/accounts/{index}/disable", guarded(account(False)))
