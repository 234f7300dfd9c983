"""Channels of type `gemini`: Google's Gemini API (generativelanguage.googleapis.com), for OpenAI clients.

    chat/completions  -> POST {base}/v1beta/models/{model}:generateContent
                         (stream: :streamGenerateContent?alt=sse, one GenerateContentResponse per `data:`)
    embeddings        -> POST {base}/v1beta/models/{model}:batchEmbedContents

The key travels only in the `x-goog-api-key` header, never in the URL (URLs end up in access logs).

Gemini's stream has no end event: it is complete when the body ends after every candidate reported a
finishReason. A body that ends before that is a cut stream (`done` stays False, the proxy says so).

Reasoning: `reasoning_effort` becomes generationConfig.thinkingConfig (thinkingBudget, or thinkingLevel for
models that take it, with includeThoughts; see relay.adapters.thinking); `thought: true` parts come back as
`reasoning_content` (on the message and on stream deltas). A functionCall part's `thoughtSignature` rides
on its tool call as `extra_content.google.thought_signature`, as Google's own OpenAI-compatible endpoint
gives it, and goes back on that functionCall part when the client sends the tool call back (Gemini 3
refuses a function call turn without it).

JSON Schemas (tool parameters, response_format json_schema) are reduced to the OpenAPI 3.0 subset the
Gemini `Schema` object accepts: `additionalProperties`, `$schema`, `$id`, `$ref`, `$defs`, `definitions`,
`strict`, `default`, `title`, `examples`, `allOf`, `not`, `if/then/else`, `patternProperties` and any other
unknown keyword are dropped; `oneOf` becomes `anyOf`; `const` becomes a one-value `enum`; a type list such
as ["string", "null"] becomes the type plus `nullable: true`; enum values are sent as strings; an object
without properties as a whole function's parameters is left out (Gemini refuses an empty OBJECT).
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import re
import sys
import time
from array import array
from collections.abc import Mapping
from typing import Any

import orjson

from ..errors import InvalidRequest, UpstreamFailure
from ..sse import SSEParser
from ..tokens import CompletionCounter, prompt_tokens
from ..types import ModelReasoning, RelayRequest, Target, UpstreamRequest, Usage
from .base import classify_status
from .thinking import gemini_thinking_config

__all__ = [
    "GeminiAdapter",
    "GeminiStream",
    "clean_schema",
    "from_gemini_response",
    "from_gemini_usage",
    "to_gemini_request",
    "tool_call_id",
]

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "MALFORMED_FUNCTION_CALL": "stop",
    "LANGUAGE": "stop",
    "OTHER": "stop",
    "FINISH_REASON_UNSPECIFIED": "stop",
}

TOOL_CHOICE_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}

# The keywords of Gemini's Schema object (an OpenAPI 3.0 subset) that a JSON Schema can carry over as-is.
_SCHEMA_KEEP = frozenset({
    "format", "description", "nullable", "maxItems", "minItems", "minProperties", "maxProperties",
    "minLength", "maxLength", "pattern", "example", "minimum", "maximum", "propertyOrdering",
})
_TYPES = frozenset({"string", "number", "integer", "boolean", "array", "object"})

_DATA_URI = re.compile(r"data:([^;,]+)?(?:;[^,]*?)?;base64,(.*)", re.S)


# -- requests ---------------------------------------------------------------------------------------------


def _model_path(model: str) -> str:
    return model[7:] if model.startswith("models/") else model


def _api_base(base_url: str) -> str:
    base = base_url.rstrip("/")
    for suffix in ("/v1beta", "/v1"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def clean_schema(schema: Any) -> Any:
    """A JSON Schema reduced to what Gemini's Schema object accepts (see the module docstring)."""
    if not isinstance(schema, Mapping):
        return schema
    out: dict[str, Any] = {}
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        if len(kinds) < len(kind):
            out["nullable"] = True
        kind = kinds[0] if kinds else None
    if isinstance(kind, str) and kind.lower() in _TYPES:
        out["type"] = kind.upper()
    for key, value in schema.items():
        if key in _SCHEMA_KEEP:
            out[key] = value
        elif key == "enum" and isinstance(value, list):
            out["enum"] = [v if isinstance(v, str) else orjson.dumps(v).decode() for v in value if v is not None]
        elif key == "const" and value is not None:
            out["enum"] = [value if isinstance(value, str) else orjson.dumps(value).decode()]
        elif key == "properties" and isinstance(value, Mapping):
            out["properties"] = {name: clean_schema(sub) for name, sub in value.items()}
        elif key == "required" and isinstance(value, list):
            out["required"] = [r for r in value if isinstance(r, str)]
        elif key == "items" and isinstance(value, Mapping):
            out["items"] = clean_schema(value)
        elif key in ("anyOf", "oneOf") and isinstance(value, list):
            subs = [s for s in value if not (isinstance(s, Mapping) and s.get("type") == "null")]
            if len(subs) < len(value):
                out["nullable"] = True
            if len(subs) == 1:
                for k, v in clean_schema(subs[0]).items():
                    out.setdefault(k, v)
            elif subs:
                out["anyOf"] = [clean_schema(s) for s in subs]
    if "enum" in out and "type" not in out:
        out["type"] = "STRING"
    return out


def _function_declaration(fn: Mapping[str, Any]) -> dict[str, Any]:
    decl: dict[str, Any] = {"name": fn.get("name")}
    if fn.get("description"):
        decl["description"] = fn["description"]
    params = fn.get("parameters")
    if isinstance(params, Mapping):
        cleaned = clean_schema(params)
        if cleaned.get("type") != "OBJECT" or cleaned.get("properties"):
            decl["parameters"] = cleaned
    return decl


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str))
    raise InvalidRequest("A message's content must be a string or an array of parts.", param="messages")


def _image_part(url: str) -> dict[str, Any]:
    m = _DATA_URI.fullmatch(url)
    if m:
        return {"inlineData": {"mimeType": m.group(1) or "application/octet-stream", "data": m.group(2)}}
    if url.startswith(("https://", "http://", "gs://")):
        mime = mimetypes.guess_type(url.split("?", 1)[0])[0] or "image/jpeg"
        return {"fileData": {"mimeType": mime, "fileUri": url}}  # Gemini fetches it; the relay never does
    raise InvalidRequest("image_url must be a data: URI or an https URL.", param="messages")


def _user_parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    if not isinstance(content, list):
        return [{"text": _text_of(content)}] if content is not None else []
    parts: list[dict[str, Any]] = []
    for p in content:
        if not isinstance(p, Mapping):
            continue
        kind = p.get("type")
        if kind == "text" and isinstance(p.get("text"), str):
            parts.append({"text": p["text"]})
        elif kind == "image_url":
            image = p.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            if isinstance(url, str):
                parts.append(_image_part(url))
        elif kind == "input_audio" and isinstance(p.get("input_audio"), Mapping):
            audio = p["input_audio"]
            fmt = audio.get("format", "wav")
            parts.append({"inlineData": {"mimeType": f"audio/{'mpeg' if fmt == 'mp3' else fmt}", "data": audio.get("data", "")}})
        elif kind == "file" and isinstance(p.get("file"), Mapping):
            data = p["file"].get("file_data")
            if isinstance(data, str):
                parts.append(_image_part(data))
    return parts


def _response_object(content: Any) -> dict[str, Any]:
    text = _text_of(content)
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"content": text}
    return value if isinstance(value, dict) else {"content": value}


def to_gemini_contents(messages: list[Any]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """OpenAI messages -> (Gemini contents, systemInstruction)."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if not parts:
            return
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})

    for i, msg in enumerate(messages):
        role = msg.get("role")
        if role in ("system", "developer"):
            text = _text_of(msg.get("content"))
            if text:
                system.append({"text": text})
        elif role == "user":
            add("user", _user_parts(msg.get("content")))
        elif role == "assistant":
            parts: list[dict[str, Any]] = []
            text = _text_of(msg.get("content"))
            if text:
                parts.append({"text": text})
            for call in msg.get("tool_calls") or ():
                fn = call.get("function") or {}
                name = fn.get("name", "")
                if isinstance(call.get("id"), str):
                    call_names[call["id"]] = name
                args = fn.get("arguments") or "{}"
                try:
                    parsed = orjson.loads(args) if isinstance(args, str) else args
                except orjson.JSONDecodeError:
                    raise InvalidRequest(
                        "A tool call's arguments are not valid JSON.", param=f"messages[{i}].tool_calls"
                    ) from None
                part: dict[str, Any] = {"functionCall": {"name": name, "args": parsed if isinstance(parsed, dict) else {}}}
                signature = _thought_signature(call)
                if signature:
                    part["thoughtSignature"] = signature
                parts.append(part)
            add("model", parts)
        elif role in ("tool", "function"):
            name = call_names.get(msg.get("tool_call_id", "")) or msg.get("name")
            if not isinstance(name, str) or not name:
                raise InvalidRequest(
                    "A tool message's tool_call_id matches no earlier tool call.", param=f"messages[{i}].tool_call_id"
                )
            add("user", [{"functionResponse": {"name": name, "response": _response_object(msg.get("content"))}}])
        else:
            raise InvalidRequest(f"Unknown message role {role!r}.", param=f"messages[{i}].role")
    return contents, ({"parts": system} if system else None)


def _thought_signature(call: Any) -> str | None:
    """The signature a tool call carries back (extra_content.google.thought_signature)."""
    extra = call.get("extra_content") if isinstance(call, Mapping) else None
    google = extra.get("google") if isinstance(extra, Mapping) else None
    sig = google.get("thought_signature") if isinstance(google, Mapping) else None
    return sig if isinstance(sig, str) and sig else None


def _with_signature(call: dict[str, Any], part: Mapping[str, Any]) -> dict[str, Any]:
    sig = part.get("thoughtSignature")
    if isinstance(sig, str) and sig:
        call["extra_content"] = {"google": {"thought_signature": sig}}
    return call


def to_gemini_request(body: Mapping[str, Any], reasoning: ModelReasoning | None = None) -> dict[str, Any]:
    """An OpenAI chat.completions body -> a Gemini GenerateContentRequest body."""
    contents, system = to_gemini_contents(list(body.get("messages") or ()))
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = system
    decls = [
        _function_declaration(t["function"]) for t in body.get("tools") or ()
        if isinstance(t, Mapping) and t.get("type") == "function" and isinstance(t.get("function"), Mapping)
    ]
    decls += [_function_declaration(f) for f in body.get("functions") or () if isinstance(f, Mapping)]
    if decls:
        out["tools"] = [{"functionDeclarations": decls}]
    choice = body.get("tool_choice")
    if isinstance(choice, str) and choice in TOOL_CHOICE_MODES:
        out["toolConfig"] = {"functionCallingConfig": {"mode": TOOL_CHOICE_MODES[choice]}}
    elif isinstance(choice, Mapping):
        name = (choice.get("function") or {}).get("name")
        if isinstance(name, str):
            out["toolConfig"] = {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    config: dict[str, Any] = {}
    for src, dst in (
        ("temperature", "temperature"), ("top_p", "topP"), ("n", "candidateCount"), ("seed", "seed"),
        ("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty"),
    ):
        if body.get(src) is not None:
            config[dst] = body[src]
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        config["maxOutputTokens"] = limit
    stop = body.get("stop")
    if isinstance(stop, str):
        config["stopSequences"] = [stop]
    elif isinstance(stop, list) and stop:
        config["stopSequences"] = stop
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping):
        if fmt.get("type") in ("json_object", "json_schema"):
            config["responseMimeType"] = "application/json"
        spec = fmt.get("json_schema")
        if fmt.get("type") == "json_schema" and isinstance(spec, Mapping) and isinstance(spec.get("schema"), Mapping):
            config["responseSchema"] = clean_schema(spec["schema"])
    thinking = gemini_thinking_config(body, reasoning or ModelReasoning())
    if thinking is not None:
        config["thinkingConfig"] = thinking
    if config:
        out["generationConfig"] = config
    return out


def _embedding_inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise InvalidRequest("A gemini channel embeds text only: 'input' must be a string or an array of strings.",
                         param="input")


# -- responses --------------------------------------------------------------------------------------------


def tool_call_id(candidate: int, ordinal: int, name: str) -> str:
    """A stable id: the same response (streamed or not) always maps to the same ids."""
    digest = hashlib.sha256(f"{candidate}:{ordinal}:{name}".encode()).hexdigest()
    return "call_" + digest[:24]


def from_gemini_usage(meta: Any) -> Usage | None:
    if not isinstance(meta, Mapping):
        return None
    prompt = meta.get("promptTokenCount", 0) + meta.get("toolUsePromptTokenCount", 0)
    completion = meta.get("candidatesTokenCount", 0) + meta.get("thoughtsTokenCount", 0)
    return Usage(prompt, completion, "upstream", cached_tokens=meta.get("cachedContentTokenCount", 0))


def _openai_usage(usage: Usage, meta: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": meta.get("thoughtsTokenCount", 0)},
    }


def _finish(reason: Any, has_calls: bool) -> str:
    mapped = FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"
    return "tool_calls" if has_calls and mapped == "stop" else mapped


def from_gemini_response(obj: Mapping[str, Any], model: str, request_id: str) -> tuple[dict[str, Any], Usage | None]:
    """A GenerateContentResponse -> (an OpenAI chat.completion, usage)."""
    choices = []
    for i, cand in enumerate(obj.get("candidates") or ()):
        index = cand.get("index", i)
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[dict[str, Any]] = []
        for part in (cand.get("content") or {}).get("parts") or ():
            if part.get("thought"):
                if isinstance(part.get("text"), str):
                    thoughts.append(part["text"])
                continue
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            fc = part.get("functionCall")
            if isinstance(fc, Mapping):
                name = fc.get("name", "")
                calls.append(_with_signature({
                    "id": tool_call_id(index, len(calls), name), "type": "function",
                    "function": {"name": name, "arguments": orjson.dumps(fc.get("args") or {}).decode()},
                }, part))
        message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None, "refusal": None}
        if thoughts:
            message["reasoning_content"] = "".join(thoughts)
        if calls:
            message["tool_calls"] = calls
        choices.append({
            "index": index, "message": message, "logprobs": None,
            "finish_reason": _finish(cand.get("finishReason"), bool(calls)),
        })
    if not choices and (obj.get("promptFeedback") or {}).get("blockReason"):
        choices.append({
            "index": 0, "message": {"role": "assistant", "content": None, "refusal": None},
            "logprobs": None, "finish_reason": "content_filter",
        })
    meta = obj.get("usageMetadata") or {}
    usage = from_gemini_usage(meta) if meta else None
    out: dict[str, Any] = {
        "id": "chatcmpl-" + str(obj.get("responseId") or request_id),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        out["usage"] = _openai_usage(usage, meta)
    return out, usage


def _floats_base64(values: list[float]) -> str:
    arr = array("f", values)
    if sys.byteorder != "little":
        arr.byteswap()
    return base64.b64encode(arr.tobytes()).decode()


# -- streams ----------------------------------------------------------------------------------------------


class GeminiStream:
    """Gemini SSE (one GenerateContentResponse per event) -> OpenAI chat.completion.chunk frames."""

    __slots__ = (
        "usage", "done", "events", "_parser", "_req", "_id", "_created", "_started", "_calls", "_finish",
        "_meta", "_text",
    )

    def __init__(self, req: RelayRequest) -> None:
        self.usage: Usage | None = None
        self.done = False
        self.events = 0
        self._parser = SSEParser()
        self._req = req
        self._id = "chatcmpl-" + req.id
        self._created = int(time.time())
        self._started: set[int] = set()  # candidates whose role chunk went out
        self._calls: dict[int, int] = {}  # tool calls emitted per candidate
        self._finish: dict[int, str] = {}  # candidate -> OpenAI finish_reason, once Gemini gave one
        self._meta: Mapping[str, Any] = {}
        self._text = CompletionCounter(req.model)

    @property
    def completion(self) -> CompletionCounter:
        return self._text

    def _frame(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        obj = {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
               "model": self._req.model, "choices": choices, **extra}
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def _delta(self, index: int, delta: dict[str, Any]) -> bytes:
        return self._frame([{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}])

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        for ev in self._parser.feed(chunk):
            if not ev.data:
                continue
            self.events += 1
            try:
                obj = orjson.loads(ev.data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                self._event(obj, out)
        return b"".join(out)

    def _event(self, obj: dict[str, Any], out: list[bytes]) -> None:
        if isinstance(obj.get("error"), Mapping):
            err = obj["error"]
            out.append(b"data: " + orjson.dumps({"error": {
                "message": str(err.get("message", "upstream error")), "type": "server_error", "param": None,
                "code": str(err.get("status") or "upstream_error"),
            }}) + b"\n\n")
            return
        if obj.get("usageMetadata"):
            self._meta = obj["usageMetadata"]
        for i, cand in enumerate(obj.get("candidates") or ()):
            index = cand.get("index", i)
            if index not in self._started:
                self._started.add(index)
                out.append(self._delta(index, {"role": "assistant", "content": ""}))
            for part in (cand.get("content") or {}).get("parts") or ():
                if part.get("thought"):
                    thought = part.get("text")
                    if isinstance(thought, str) and thought:
                        self._text.add(orjson.dumps(thought)[1:-1])  # thinking is output, billed as such
                        out.append(self._delta(index, {"reasoning_content": thought}))
                    continue
                text = part.get("text")
                if isinstance(text, str) and text:
                    self._text.add(orjson.dumps(text)[1:-1])
                    out.append(self._delta(index, {"content": text}))
                fc = part.get("functionCall")
                if isinstance(fc, Mapping):
                    n = self._calls.get(index, 0)
                    self._calls[index] = n + 1
                    name = fc.get("name", "")
                    args = orjson.dumps(fc.get("args") or {})
                    self._text.add(orjson.dumps(args.decode())[1:-1])
                    out.append(self._delta(index, {"tool_calls": [_with_signature({
                        "index": n, "id": tool_call_id(index, n, name), "type": "function",
                        "function": {"name": name, "arguments": args.decode()},
                    }, part)]}))
            if cand.get("finishReason"):
                self._finish[index] = _finish(cand["finishReason"], index in self._calls)
        if not self._started and (obj.get("promptFeedback") or {}).get("blockReason"):
            self._started.add(0)
            out.append(self._delta(0, {"role": "assistant", "content": ""}))
            self._finish[0] = "content_filter"
        if self._finish and all(i in self._finish for i in self._started):
            self.done = True
            self.usage = from_gemini_usage(self._meta) if self._meta else None

    def close(self) -> bytes:
        self._parser.close()
        if not self.done:
            return b""
        out = [
            self._frame([{"index": i, "delta": {}, "logprobs": None, "finish_reason": r}])
            for i, r in sorted(self._finish.items())
        ]
        if self._req.wants_usage and self.usage is not None:
            out.append(self._frame([], usage=_openai_usage(self.usage, self._meta)))
        out.append(b"data: [DONE]\n\n")
        return b"".join(out)


# -- the adapter --------------------------------------------------------------------------------------------


class GeminiAdapter:
    def build_request(self, req: RelayRequest, target: Target) -> UpstreamRequest:
        body = req.json
        if body is None:
            raise InvalidRequest(f"A gemini channel takes JSON bodies only ({req.endpoint}).")
        model = _model_path(target.upstream_model)
        base = f"{_api_base(target.base_url)}/v1beta/models/{model}"
        headers = {**target.extra_headers, "x-goog-api-key": target.api_key, "Content-Type": "application/json"}
        if req.endpoint == "chat/completions":
            url = base + (":streamGenerateContent?alt=sse" if req.stream else ":generateContent")
            reasoning = target.reasoning.for_model(model)
            return UpstreamRequest("POST", url, headers, orjson.dumps(to_gemini_request(body, reasoning)))
        if req.endpoint == "embeddings":
            one: dict[str, Any] = {"model": f"models/{model}"}
            dims = body.get("dimensions")
            if isinstance(dims, int) and dims > 0:
                one["outputDimensionality"] = dims
            requests = [{**one, "content": {"parts": [{"text": t}]}} for t in _embedding_inputs(body.get("input"))]
            return UpstreamRequest("POST", base + ":batchEmbedContents", headers, orjson.dumps({"requests": requests}))
        raise InvalidRequest(f"The endpoint /v1/{req.endpoint} is not available for model '{req.model}'.",
                             code="unsupported_endpoint")

    def parse_response(self, req: RelayRequest, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body, None
        if not isinstance(obj, dict):
            return body, None
        if req.endpoint == "embeddings":
            return self._embeddings(req, obj)
        out, usage = from_gemini_response(obj, req.model, req.id)
        return orjson.dumps(out), usage

    def _embeddings(self, req: RelayRequest, obj: Mapping[str, Any]) -> tuple[bytes, Usage | None]:
        as_base64 = (req.json or {}).get("encoding_format") == "base64"
        data = []
        for i, emb in enumerate(obj.get("embeddings") or ()):
            values = emb.get("values") or []
            data.append({"object": "embedding", "index": i,
                         "embedding": _floats_base64(values) if as_base64 else values})
        meta = obj.get("usageMetadata")
        if isinstance(meta, Mapping) and "promptTokenCount" in meta:
            usage = Usage(meta["promptTokenCount"], 0, "upstream")
        else:
            usage = Usage(prompt_tokens(req.endpoint, req.json), 0, "estimate")
        out = {"object": "list", "data": data, "model": req.model,
               "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens}}
        return orjson.dumps(out), usage

    def stream_handler(self, req: RelayRequest) -> GeminiStream:
        return GeminiStream(req)

    def parse_error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamFailure:
        """Gemini's {"error": {"code", "message", "status", "details"}} -> a failure with an OpenAI error body."""
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            obj = None
        err = obj.get("error") if isinstance(obj, dict) else None
        err = err if isinstance(err, dict) else {}
        message = err.get("message") or body[:500].decode("utf-8", "replace") or f"upstream answered {status}"
        code = err.get("status") or None
        reasons = {d.get("reason") for d in err.get("details") or () if isinstance(d, dict)}
        retry_after = None
        for d in err.get("details") or ():
            delay = d.get("retryDelay") if isinstance(d, dict) else None
            if isinstance(delay, str) and delay.endswith("s"):
                try:
                    retry_after = float(delay[:-1])
                except ValueError:
                    pass
        if status == 429:
            type_ = "rate_limit_error"
        elif status in (401, 403) or "API_KEY_INVALID" in reasons:
            type_ = "authentication_error"
        elif status >= 500:
            type_ = "server_error"
        else:
            type_ = "invalid_request_error"
        openai_body = orjson.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})
        failure = classify_status(status, headers, openai_body, "application/json")
        if "API_KEY_INVALID" in reasons:  # Gemini answers a bad key with 400: it is the account, not the request
            failure.kind = "auth"
        if failure.retry_after is None and retry_after is not None:
            failure.retry_after = retry_after
        return failure
