"""bench/load.py's stream mode: what counts as a complete stream, for chat and for the Responses API."""

from __future__ import annotations

import argparse

import pytest
from aiohttp import ClientSession, web

from bench.fake_upstream import FakeOptions, build_app
from bench.load import Load, Stats

COMPLETED = (b'event: response.completed\ndata: {"type":"response.completed","sequence_number":9,'
             b'"response":{"id":"resp_1","status":"completed","usage":{"input_tokens":1,"output_tokens":2}}}\n\n')
DELTA = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"Hi"}\n\n'
BODIES = {
    "whole": DELTA + COMPLETED,
    "cut": DELTA + COMPLETED[:60],  # the connection ends inside the terminal event
    "done-only": DELTA + b"data: [DONE]\n\n",  # chat's terminator is not the end of a Responses stream
    "named-in-text": DELTA.replace(b'"Hi"', b'"event: response.completed\\n"'),
}


def args(url: str, api: str) -> argparse.Namespace:
    return argparse.Namespace(url=url, key="k1", model="demo", mode="stream", api=api)


@pytest.fixture
async def canned(aiohttp_server):
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        body = BODIES[request.match_info["name"]]
        for i in range(0, len(body), 7):  # small pieces: the event line may straddle two reads
            await resp.write(body[i : i + 7])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/{name}", handler)
    return await aiohttp_server(app)


async def test_a_responses_stream_counts_complete_only_with_its_whole_response_completed_event(canned) -> None:
    async with ClientSession() as http:
        for name, complete in (("whole", 1), ("cut", 0), ("done-only", 0), ("named-in-text", 0)):
            st = Stats()
            await Load(args(str(canned.make_url(f"/{name}")), "responses"), http).one_stream(st)
            assert (st.ok, st.done) == (1, complete), name
            assert len(st.ttft) == 1  # the text delta is seen as the first text


async def test_the_fakes_streams_complete_in_both_apis_and_chat_still_needs_done(aiohttp_server) -> None:
    server = await aiohttp_server(build_app(FakeOptions(chunks=5)))
    async with ClientSession() as http:
        for path, api, done in (("/v1/responses", "responses", 1), ("/v1/chat/completions", "chat", 1),
                                ("/v1/responses", "chat", 0)):  # a chat body there is refused: not complete
            st = Stats()
            await Load(args(str(server.make_url(path)), api), http).one_stream(st)
            assert st.done == done, (path, api)

