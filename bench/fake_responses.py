"""OpenAI's Responses API on the fake upstream, stateful per account (the Bearer key).

Routes (with and without ``/v1``; wired in by ``fake_upstream.build_app``, so RECORDS and SCRIPT
work on them as on every route):

* ``POST responses``: validates like OpenAI and answers a ``response`` object. Output: a
  ``function_call`` for the first function tool (or the one ``tool_choice`` names) when tools are
  offered, unless the input ends with a ``function_call_output`` and ``tool_choice`` is the
  model's (absent or "auto"); else a ``message`` with the demo sentence in ``FakeOptions.chunks``
  pieces (JSON for ``text.format`` json_schema/json_object).
  ``reasoning`` puts a reasoning item first (``chunks`` reasoning tokens; a summary when
  ``reasoning.summary`` is set; ``encrypted_content`` when ``include`` asks for it).
  ``max_output_tokens`` (>= 16, as OpenAI requires) below the pieces -> ``incomplete``. Usage counts
  the input text like chat does; the input and output of a ``previous_response_id`` chain come back
  as ``cached_tokens``, so prompt caching is visible.
* ``stream: true``: SSE with ``event:`` lines and ``sequence_number`` in the API's order, ending
  with ``response.completed``/``response.incomplete`` (no ``[DONE]``). SCRIPT's ``stall_after(n)`` and
  ``truncate_after(n)`` count the delta events as the content chunks.
* ``GET responses/{id}`` (``?stream=true&starting_after=N`` replays the events after N),
  ``DELETE responses/{id}``, ``POST responses/{id}/cancel``, ``GET responses/{id}/input_items``
  (``limit``, ``order``, ``after``): only the account that created the response finds it; any other
  gets OpenAI's 404. ``store: false`` keeps nothing.
* ``background: true``: ``queued``, then ``in_progress`` and the finished response on the next two
  retrieves; cancel turns a queued/in-progress one ``cancelled``, returns a finished one unchanged,
  and refuses (400) a response that was not created in the background.

Test hook: ``app[RESPONSES]`` is the :class:`ResponseStore` (``get(key, id)`` the response as a
retrieve by that account would see it, ``ids(key)``, ``len()``); it keeps the last 10,000 responses.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from bench.fake_responses_wire import answer, bad_type, check, events, not_found, parse_input, sse_event
from bench.fake_upstream import ApiError, Call, FakeUpstream, Reply

__all__ = ["RESPONSES", "ResponseStore", "ResponsesFake", "Stored"]

_SSE = "text/event-stream; charset=utf-8"


@dataclass(slots=True)
class Stored:
    """One stored response: its finished form, its input items and where a background one is."""
    final: dict[str, Any]
    items: list[dict[str, Any]]
    splits: list[int]  # delta events per output item, so a replay numbers events as the stream did
    status: str  # queued | in_progress | cancelled | the final status
    context: int  # input + output tokens: the cached input of a follow-up

    def view(self) -> dict[str, Any]:
        if self.status == self.final["status"]:
            return self.final
        return {**self.final, "status": self.status, "completed_at": None, "output": [],
                "usage": None, "incomplete_details": None}


class ResponseStore:
    """Stored responses under (account key, id); the oldest go first past ``limit``."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._data: OrderedDict[tuple[str, str], Stored] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def put(self, key: str, stored: Stored) -> None:
        self._data[(key, stored.final["id"])] = stored
        while len(self._data) > self.limit:
            self._data.popitem(last=False)

    def find(self, key: str, rid: str) -> Stored | None:
        return self._data.get((key, rid))

    def pop(self, key: str, rid: str) -> Stored | None:
        return self._data.pop((key, rid), None)

    def get(self, key: str, rid: str) -> dict[str, Any] | None:
        stored = self.find(key, rid)
        return None if stored is None else stored.view()

    def ids(self, key: str) -> list[str]:
        return [rid for k, rid in self._data if k == key]


RESPONSES = web.AppKey("fake_responses", ResponseStore)


class ResponsesFake:
    """The Responses endpoints of one fake app; state lives in ``store``."""

    def __init__(self, fake: FakeUpstream, limit: int = 10_000) -> None:
        self.fake = fake
        self.store = ResponseStore(limit)

    def routes(self) -> list[tuple[str, str, Callable[[Call], Reply]]]:
        return [("POST", "responses", self.create),
                ("GET", "responses/{rid}", self.retrieve),
                ("DELETE", "responses/{rid}", self.delete),
                ("POST", "responses/{rid}/cancel", self.cancel),
                ("GET", "responses/{rid}/input_items", self.input_items)]

    def create(self, call: Call) -> Reply:
        body = call.json()
        model, inp = call.need("model"), call.need("input")
        if not isinstance(model, str):
            raise bad_type("model", "a string", model)
        items = parse_input(inp)
        check(body)
        key = call.key or ""
        prev_id = body.get("previous_response_id")
        prev = self.store.find(key, prev_id) if prev_id else None
        if prev_id and prev is None:
            raise ApiError(404, f"Previous response with id '{prev_id}' not found.",
                           param="previous_response_id", code="previous_response_not_found")
        cached = prev.context if prev is not None else 0
        final, splits = answer(body, model, items, max(1, self.fake.opts.chunks), cached)
        store, background = body.get("store") is not False, bool(body.get("background"))
        stream = bool(body.get("stream"))
        stored = Stored(final, items, splits, final["status"] if stream or not background
                        else "queued", final["usage"]["total_tokens"])
        if store:
            self.store.put(key, stored)
        if not stream:
            return Reply(orjson.dumps(stored.view()))
        obfuscate = (body.get("stream_options") or {}).get("include_obfuscation") is not False
        return self._stream(events(final, splits, obfuscate, final["status"]))

    def _find(self, call: Call) -> Stored:
        rid = call.request.match_info["rid"]
        stored = self.store.find(call.key or "", rid)
        if stored is None:
            raise not_found(rid)
        return stored

    @staticmethod
    def _stream(evs: list[dict[str, Any]]) -> Reply:
        head = next((i for i, e in enumerate(evs) if e["type"].endswith(".delta")),
                    max(0, len(evs) - 1))  # the events before the first delta come whole
        return Reply(content_type=_SSE, pieces=[sse_event(e) for e in evs], head=head, sse=True)

    def retrieve(self, call: Call) -> Reply:
        stored = self._find(call)
        if stored.status == "queued":  # a background response moves on as it is polled
            stored.status = "in_progress"
        elif stored.status == "in_progress":
            stored.status = stored.final["status"]
        query = call.request.query
        if query.get("stream") != "true":
            return Reply(orjson.dumps(stored.view()))
        try:
            after = int(query.get("starting_after", "-1"))
        except ValueError:
            raise ApiError(400, "Invalid 'starting_after': expected an integer.",
                           param="starting_after", code="invalid_type") from None
        upto = "in_progress" if stored.status == "cancelled" else stored.status
        evs = events(stored.final, stored.splits, query.get("include_obfuscation") != "false",
                     upto)
        return self._stream([e for e in evs if e["sequence_number"] > after])

    def delete(self, call: Call) -> Reply:
        stored = self._find(call)
        self.store.pop(call.key or "", stored.final["id"])
        return Reply(orjson.dumps({"id": stored.final["id"], "object": "response",
                                   "deleted": True}))

    def cancel(self, call: Call) -> Reply:
        stored = self._find(call)
        if not stored.final["background"]:
            raise ApiError(400, "Only responses created with background=true can be cancelled.",
                           code=None)
        if stored.status in ("queued", "in_progress"):
            stored.status = "cancelled"
        return Reply(orjson.dumps(stored.view()))

    def input_items(self, call: Call) -> Reply:
        stored = self._find(call)
        query = call.request.query
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            raise bad_type("limit", "an integer", query["limit"]) from None
        if not 1 <= limit <= 100:
            raise ApiError(400, f"Invalid 'limit': expected a value between 1 and 100, but got "
                           f"{limit} instead.", param="limit", code="invalid_value")
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise ApiError(400, f"Invalid value: '{order}'. Supported values are: 'asc' and "
                           "'desc'.", param="order", code="invalid_value")
        items = stored.items if order == "asc" else stored.items[::-1]
        if "after" in query:
            ids = [item["id"] for item in items]
            items = items[ids.index(query["after"]) + 1:] if query["after"] in ids else []
        page = items[:limit]
        return Reply(orjson.dumps({"object": "list", "data": page,
                                   "first_id": page[0]["id"] if page else None,
                                   "last_id": page[-1]["id"] if page else None,
                                   "has_more": len(items) > limit}))
