"""A fake of the Gemini API (generativelanguage.googleapis.com, v1beta) speaking its real wire format.

    POST /v1beta/models/{model}:generateContent
    POST /v1beta/models/{model}:streamGenerateContent?alt=sse   (events end with CRLF CRLF, as Google's do)
    POST /v1beta/models/{model}:batchEmbedContents
    POST /v1beta/models/{model}:embedContent
    POST /v1beta/models/{model}:countTokens

The key must come in `x-goog-api-key`; a `key=` query parameter is refused (400), an unknown key gets
Google's 400 API_KEY_INVALID, a missing one 403. Every request is recorded (`RECORDS`).

Answers are deterministic: with function declarations and no functionResponse in the last turn the model
calls the first function with arguments made from its schema; with responseSchema it answers JSON made
from the schema; otherwise it says TEXT (after a tool round: "The tool said: {response json}").
With generationConfig.thinkingConfig.includeThoughts the answer starts with a thought part (`THOUGHT`,
`"thought": true`; streamed as its own chunk first); a thinkingConfig with both thinkingBudget and
thinkingLevel is refused, as Google refuses it. A functionCall part carries a `thoughtSignature` (SIGNATURE),
and for gemini-3 models (which, like the real ones, require it back) a model turn whose first functionCall
part comes without one is refused with Google's 400.
`SCRIPT[key]` is a FIFO of actions for that key: ("status", code, status_name, message) or ("truncate",)
(a stream that ends cleanly but without a finishReason).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

TEXT = "Hello! I am the fake Gemini model, answering in a few chunks."
MODEL_VERSION = "gemini-2.5-flash"
THOUGHT = "**Planning the answer** I will greet the user and keep it short."
SIGNATURE = "c2lnbmF0dXJl"


@dataclass(slots=True)
class GeminiReceived:
    method: str
    path: str
    query: str
    url: str
    headers: dict[str, str]
    body: Any


RECORDS = web.AppKey("gemini_records", list[GeminiReceived])
SCRIPT = web.AppKey("gemini_script", dict[str, list[tuple[Any, ...]]])
KEYS = web.AppKey("gemini_keys", set[str])
STREAMED = web.AppKey("gemini_streamed", list[bytes])  # the frames of the last stream, as sent


def _error(code: int, status: str, message: str, details: list[Any] | None = None) -> web.Response:
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        err["details"] = details
    return web.Response(status=code, body=orjson.dumps({"error": err}, option=orjson.OPT_INDENT_2),
                        content_type="application/json")


def _sample(schema: Any) -> Any:
    """A value that satisfies a (Gemini) schema."""
    if not isinstance(schema, dict):
        return None
    if schema.get("enum"):
        return schema["enum"][0]
    kind = str(schema.get("type", "STRING")).upper()
    if kind == "OBJECT":
        props = schema.get("properties") or {}
        return {name: _sample(sub) for name, sub in props.items()}
    if kind == "ARRAY":
        return [_sample(schema.get("items") or {})]
    if kind == "INTEGER":
        return 1
    if kind == "NUMBER":
        return 1.5
    if kind == "BOOLEAN":
        return True
    return "Paris"


def _prompt_tokens(body: dict[str, Any]) -> int:
    return max(1, len(orjson.dumps(body.get("contents", []))) // 4)


def _answer(body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The parts of one candidate and its finishReason."""
    contents = body.get("contents") or []
    last = contents[-1]["parts"] if contents else []
    responses = [p["functionResponse"] for p in last if "functionResponse" in p]
    decls = [d for t in body.get("tools") or () for d in t.get("functionDeclarations") or ()]
    mode = ((body.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("mode", "AUTO")
    if responses:
        return [{"text": "The tool said: " + orjson.dumps(responses[0]["response"]).decode()}], "STOP"
    if decls and mode != "NONE":
        allowed = ((body.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("allowedFunctionNames")
        decl = next((d for d in decls if not allowed or d["name"] in allowed), decls[0])
        args = _sample(decl.get("parameters") or {"type": "OBJECT"}) or {}
        return [{"functionCall": {"name": decl["name"], "args": args}, "thoughtSignature": SIGNATURE}], "STOP"
    config = body.get("generationConfig") or {}
    if config.get("responseMimeType") == "application/json":
        value = _sample(config.get("responseSchema")) if config.get("responseSchema") else {"answer": "Paris"}
        return [{"text": orjson.dumps(value).decode()}], "STOP"
    limit = config.get("maxOutputTokens")
    if isinstance(limit, int) and limit < 5:
        return [{"text": " ".join(TEXT.split()[:limit])}], "MAX_TOKENS"
    return [{"text": TEXT}], "STOP"


def _thinking(body: dict[str, Any]) -> dict[str, Any]:
    return (body.get("generationConfig") or {}).get("thinkingConfig") or {}


def _problem(model: str, body: dict[str, Any]) -> web.Response | None:
    config = _thinking(body)
    if "thinkingBudget" in config and "thinkingLevel" in config:
        return _error(400, "INVALID_ARGUMENT", "You can only set only one of thinking budget and thinking level.")
    if model.startswith("gemini-3"):
        for i, content in enumerate(body.get("contents") or ()):
            calls = [p for p in content.get("parts") or () if "functionCall" in p]
            if content.get("role") == "model" and calls and calls[0].get("thoughtSignature") != SIGNATURE:
                return _error(400, "INVALID_ARGUMENT", f"Function call is missing a thought_signature in functionCall "
                              f"parts. This is required for tools to work correctly, and missing thought_signature "
                              f"may lead to degraded model performance. Additional data, function call "
                              f"`default_api:{calls[0]['functionCall'].get('name')}` , position {i + 1}. Please refer "
                              f"to https://ai.google.dev/gemini-api/docs/thought-signatures for more details.")
    return None


def _with_thought(body: dict[str, Any], parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return ([{"text": THOUGHT, "thought": True}] + parts) if _thinking(body).get("includeThoughts") else parts


def _usage(body: dict[str, Any], parts: list[dict[str, Any]], n: int) -> dict[str, Any]:
    out = max(1, len(orjson.dumps(parts)) // 8) * n
    prompt = _prompt_tokens(body)
    return {"promptTokenCount": prompt, "candidatesTokenCount": out, "thoughtsTokenCount": 7,
            "totalTokenCount": prompt + out + 7,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]}


class _Fake:
    def __init__(self, app: web.Application) -> None:
        self.app = app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        self.app[RECORDS].append(GeminiReceived(
            request.method, request.path, request.query_string, str(request.url), dict(request.headers), body))
        if "key" in request.query:
            return _error(400, "INVALID_ARGUMENT", "This fake refuses API keys in the URL.")
        key = request.headers.get("x-goog-api-key")
        if not key:
            return _error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers (callers without "
                          "established identity). Please use API Key or other form of API consumer identity to call this API.")
        if key not in self.app[KEYS]:
            return _error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", [{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}])
        action = None
        script = self.app[SCRIPT].get(key)
        if script:
            action = script.pop(0)
            if action[0] == "status":
                _, code, status, message = action
                details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}] if code == 429 else None
                return _error(code, status, message, details)
        name, _, method = request.match_info["name"].partition(":")
        if not isinstance(body, dict):
            return _error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        problem = _problem(name, body)
        if problem is not None:
            return problem
        if method == "generateContent":
            return web.json_response(self._generate(name, body), dumps=lambda o: orjson.dumps(o).decode())
        if method == "streamGenerateContent":
            if request.query.get("alt") != "sse":
                return _error(400, "INVALID_ARGUMENT", "This fake streams with alt=sse only.")
            return await self._stream(request, name, body, truncate=action == ("truncate",))
        if method == "batchEmbedContents":
            return self._embed(name, body)
        if method == "embedContent":
            if "content" not in body:
                return _error(400, "INVALID_ARGUMENT", "* EmbedContentRequest.content: content is not specified")
            one = self._embed(name, {"requests": [{**body, "model": f"models/{name}"}]})
            values = orjson.loads(one.body)["embeddings"][0]  # type: ignore[arg-type]
            return web.json_response({"embedding": values}, dumps=lambda o: orjson.dumps(o).decode())
        if method == "countTokens":
            inner = body.get("generateContentRequest") or body
            n = _prompt_tokens(inner)
            return web.json_response({"totalTokens": n, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": n}]},
                                     dumps=lambda o: orjson.dumps(o).decode())
        return _error(404, "NOT_FOUND", f"Method {method} not found.")

    def _generate(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        n = (body.get("generationConfig") or {}).get("candidateCount") or 1
        parts, reason = _answer(body)
        parts = _with_thought(body, parts)
        return {
            "candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": reason, "index": i}
                           for i in range(n)],
            "usageMetadata": _usage(body, parts, n),
            "modelVersion": MODEL_VERSION,
            "responseId": "fakeResp" + hashlib.sha256(orjson.dumps(body)).hexdigest()[:10],
        }

    async def _stream(self, request: web.Request, model: str, body: dict[str, Any], truncate: bool) -> web.StreamResponse:
        self.app[STREAMED].clear()
        parts, reason = _answer(body)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        usage = _usage(body, parts, 1)
        chunks: list[dict[str, Any]] = []
        if "text" in parts[0]:
            words = parts[0]["text"].split(" ")
            pieces = [" ".join(words[i:i + 3]) + (" " if i + 3 < len(words) else "") for i in range(0, len(words), 3)]
            chunks = [{"content": {"parts": [{"text": p}], "role": "model"}, "index": 0} for p in pieces]
        else:
            chunks = [{"content": {"parts": parts, "role": "model"}, "index": 0}]
        if _thinking(body).get("includeThoughts"):
            chunks.insert(0, {"content": {"parts": [{"text": THOUGHT, "thought": True}], "role": "model"}, "index": 0})
        if not truncate:
            chunks[-1]["finishReason"] = reason
        for i, cand in enumerate(chunks):
            last = i == len(chunks) - 1
            meta = usage if last else {"promptTokenCount": usage["promptTokenCount"],
                                       "totalTokenCount": usage["promptTokenCount"]}
            if last and truncate:
                meta = {"promptTokenCount": usage["promptTokenCount"], "totalTokenCount": usage["promptTokenCount"]}
            event = {"candidates": [cand], "usageMetadata": meta, "modelVersion": MODEL_VERSION,
                     "responseId": "fakeStream"}
            frame = b"data: " + orjson.dumps(event) + b"\r\n\r\n"
            self.app[STREAMED].append(frame)
            await resp.write(frame)
        await resp.write_eof()
        return resp

    def _embed(self, model: str, body: dict[str, Any]) -> web.Response:
        out = []
        for i, r in enumerate(body.get("requests") or ()):
            if r.get("model") != f"models/{model}":
                return _error(400, "INVALID_ARGUMENT", f"* BatchEmbedContentsRequest.requests[{i}].model: unexpected "
                              f"model name format")
            text = "".join(p.get("text", "") for p in r["content"]["parts"])
            digest = hashlib.sha256(text.encode()).digest()
            dims = r.get("outputDimensionality") or 8
            out.append({"values": [round((digest[j % 32] - 128) / 128, 6) for j in range(dims)]})
        return web.json_response({"embeddings": out}, dumps=lambda o: orjson.dumps(o).decode())


def build_app(keys: tuple[str, ...] = ("gk-1",)) -> web.Application:
    app = web.Application()
    app[RECORDS] = []
    app[SCRIPT] = {}
    app[KEYS] = set(keys)
    app[STREAMED] = []
    fake = _Fake(app)
    app.router.add_post("/v1beta/models/{name}", fake.handle)
    return app
