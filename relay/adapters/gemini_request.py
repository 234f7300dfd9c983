"""Gemini requests -> OpenAI requests, for the Gemini-native routes on OpenAI-dialect channels. Pure.

- generateContent: `systemInstruction` becomes a leading system message; `contents` turns (user, model)
  become user and assistant messages: text parts as text, `inlineData` images as data-URL image_url parts
  (wav/mp3 audio as input_audio, other files as file parts), `fileData` URIs as image_url parts,
  `functionCall` parts as tool_calls, `functionResponse` parts as tool messages (placed before the rest of
  their turn, matched to their call by id, else by name in order); thought parts of earlier turns are
  dropped. `tools[].functionDeclarations` become function tools (Gemini's Schema, types in capitals, turned
  back into JSON Schema; `parametersJsonSchema` taken as it is); `toolConfig` becomes tool_choice;
  `generationConfig` maps temperature, topP, maxOutputTokens, stopSequences, candidateCount (n),
  presence/frequency penalties, seed and responseMimeType + responseSchema / responseJsonSchema
  (response_format); safety settings, topK and the other Google-only options are dropped.
- embedContent / batchEmbedContents: the text of each content becomes one `input` of /embeddings
  (outputDimensionality becomes dimensions).

Google's JSON accepts every field name in lowerCamelCase or snake_case (the google-genai SDK sends some of
each: `fileData: {"file_uri": ...}`); `camel_keys` makes a body lowerCamelCase once, at the edge, leaving
alone what is the client's own data (function arguments and responses, JSON Schemas, property names).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from ..errors import InvalidRequest

__all__ = ["camel_keys", "from_gemini_schema", "to_chat_request", "to_embeddings_request"]

_MODES = {"AUTO": "auto", "ANY": "required", "NONE": "none", "VALIDATED": "auto"}
_AUDIO = {"audio/wav": "wav", "audio/x-wav": "wav", "audio/mp3": "mp3", "audio/mpeg": "mp3"}


# Fields whose value is the client's own data, kept as it is.
_OPAQUE = frozenset({"args", "response", "parametersJsonSchema", "responseJsonSchema", "example", "default",
                     "labels", "metadata"})


def _camel(name: str) -> str:
    if "_" not in name:
        return name
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def camel_keys(value: Any) -> Any:
    """A Gemini request with every field name in lowerCamelCase (see the module docstring)."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            name = _camel(key) if isinstance(key, str) else key
            if name in _OPAQUE:
                out[name] = sub
            elif name == "properties" and isinstance(sub, Mapping):
                out[name] = {prop: camel_keys(schema) for prop, schema in sub.items()}
            else:
                out[name] = camel_keys(sub)
        return out
    if isinstance(value, list):
        return [camel_keys(v) for v in value]
    return value


def from_gemini_schema(schema: Any) -> Any:
    """Gemini's Schema object (an OpenAPI 3.0 subset, types in capitals) -> JSON Schema."""
    if not isinstance(schema, Mapping):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            out["type"] = value.lower()
        elif key == "properties" and isinstance(value, Mapping):
            out["properties"] = {k: from_gemini_schema(v) for k, v in value.items()}
        elif key == "items":
            out["items"] = from_gemini_schema(value)
        elif key == "anyOf" and isinstance(value, list):
            out["anyOf"] = [from_gemini_schema(v) for v in value]
        elif key in ("nullable", "propertyOrdering", "example"):
            continue
        else:
            out[key] = value
    if schema.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def _call_id(turn: int, n: int, name: str) -> str:
    """A stable id for a call the client sent without one (Gemini API calls carry none)."""
    return "call_" + hashlib.sha256(f"{turn}:{n}:{name}".encode()).hexdigest()[:24]


def _media_part(mime: str, data: str) -> dict[str, Any]:
    if mime.startswith("image/"):
        return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}
    if mime in _AUDIO:
        return {"type": "input_audio", "input_audio": {"data": data, "format": _AUDIO[mime]}}
    return {"type": "file", "file": {"file_data": f"data:{mime};base64,{data}"}}


def _parts(content: Any, where: str) -> list[Any]:
    if not isinstance(content, Mapping):
        raise InvalidRequest(f"Invalid value at '{where}': a Content object is required.")
    parts = content.get("parts")
    if parts is None:
        return []
    if not isinstance(parts, list) or not all(isinstance(p, Mapping) for p in parts):
        raise InvalidRequest(f"Invalid value at '{where}.parts': an array of Part objects is required.")
    return parts


def _text(parts: list[Any]) -> str:
    return "".join(p["text"] for p in parts if isinstance(p.get("text"), str) and not p.get("thought"))


class _Calls:
    """Calls made so far in the conversation, so responses can be matched to them."""

    def __init__(self) -> None:
        self.by_id: dict[str, str] = {}
        self.open: list[tuple[str, str]] = []  # (name, id) not answered yet, in order

    def made(self, name: str, cid: str) -> None:
        self.by_id[cid] = name
        self.open.append((name, cid))

    def answer(self, name: str, cid: Any) -> str:
        if isinstance(cid, str) and cid:
            self.open = [o for o in self.open if o[1] != cid]
            return cid
        for i, (n, c) in enumerate(self.open):
            if n == name:
                del self.open[i]
                return c
        return _call_id(-1, len(self.by_id), name)


def _user_turn(parts: list[Any], where: str, calls: _Calls) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    content: list[dict[str, Any]] = []
    for j, p in enumerate(parts):
        at = f"{where}.parts[{j}]"
        if p.get("thought"):
            continue
        if isinstance(p.get("text"), str):
            content.append({"type": "text", "text": p["text"]})
        elif isinstance(p.get("inlineData"), Mapping):
            d = p["inlineData"]
            content.append(_media_part(str(d.get("mimeType") or "application/octet-stream"), str(d.get("data") or "")))
        elif isinstance(p.get("fileData"), Mapping):
            uri = p["fileData"].get("fileUri")
            if not isinstance(uri, str):
                raise InvalidRequest(f"Invalid value at '{at}.fileData.fileUri': a URI is required.")
            content.append({"type": "image_url", "image_url": {"url": uri}})
        elif isinstance(p.get("functionResponse"), Mapping):
            fr = p["functionResponse"]
            name = str(fr.get("name") or "")
            response = fr.get("response")
            out.append({"role": "tool", "tool_call_id": calls.answer(name, fr.get("id")),
                        "content": orjson.dumps(response if response is not None else {}).decode()})
        elif isinstance(p.get("functionCall"), Mapping):
            raise InvalidRequest(f"Invalid value at '{at}': a functionCall part belongs to a model turn.")
    if content:
        texts = all(c["type"] == "text" for c in content)
        out.append({"role": "user", "content": "".join(c["text"] for c in content) if texts and len(content) == 1
                    else content})
    return out


def _model_turn(parts: list[Any], turn: int, calls: _Calls) -> dict[str, Any] | None:
    text = _text(parts)
    tool_calls: list[dict[str, Any]] = []
    for p in parts:
        fc = p.get("functionCall")
        if isinstance(fc, Mapping):
            name = str(fc.get("name") or "")
            given = fc.get("id")
            cid = given if isinstance(given, str) and given else _call_id(turn, len(tool_calls), name)
            calls.made(name, cid)
            tool_calls.append({"id": cid, "type": "function", "function": {
                "name": name, "arguments": orjson.dumps(fc.get("args") or {}).decode()}})
    if not text and not tool_calls:
        return None
    msg: dict[str, Any] = {"role": "assistant", "content": text or None}
    if tool_calls:
        msg["tool_calls"] = tool_calls
    return msg


def _tools(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidRequest("Invalid value at 'tools': an array of Tool objects is required.")
    out = []
    for i, tool in enumerate(tools):
        decls = tool.get("functionDeclarations") if isinstance(tool, Mapping) else None
        for j, d in enumerate(decls or ()):
            if not isinstance(d, Mapping) or not isinstance(d.get("name"), str) or not d["name"]:
                raise InvalidRequest(
                    f"Invalid value at 'tools[{i}].function_declarations[{j}].name': a name is required.")
            fn: dict[str, Any] = {"name": d["name"]}
            if d.get("description"):
                fn["description"] = d["description"]
            if isinstance(d.get("parametersJsonSchema"), Mapping):
                fn["parameters"] = d["parametersJsonSchema"]
            elif isinstance(d.get("parameters"), Mapping):
                fn["parameters"] = from_gemini_schema(d["parameters"])
            else:
                fn["parameters"] = {"type": "object", "properties": {}}
            out.append({"type": "function", "function": fn})
    return out


def _tool_choice(body: Mapping[str, Any]) -> Any:
    config = body.get("toolConfig")
    fcc = config.get("functionCallingConfig") if isinstance(config, Mapping) else None
    if not isinstance(fcc, Mapping):
        return None
    mode = _MODES.get(str(fcc.get("mode") or "AUTO").upper(), "auto")
    allowed = fcc.get("allowedFunctionNames")
    if mode == "required" and isinstance(allowed, list) and len(allowed) == 1 and isinstance(allowed[0], str):
        return {"type": "function", "function": {"name": allowed[0]}}
    return mode


def _generation_config(config: Any, out: dict[str, Any]) -> None:
    if config is None:
        return
    if not isinstance(config, Mapping):
        raise InvalidRequest("Invalid value at 'generation_config': a GenerationConfig object is required.")
    for src, dst in (("temperature", "temperature"), ("topP", "top_p"), ("maxOutputTokens", "max_tokens"),
                     ("candidateCount", "n"), ("presencePenalty", "presence_penalty"),
                     ("frequencyPenalty", "frequency_penalty"), ("seed", "seed")):
        if config.get(src) is not None:
            out[dst] = config[src]
    stops = config.get("stopSequences")
    if isinstance(stops, list) and stops:
        out["stop"] = [s for s in stops if isinstance(s, str)]
    if config.get("responseMimeType") == "application/json" or config.get("responseSchema") or config.get(
            "responseJsonSchema"):
        schema = config.get("responseJsonSchema")
        if not isinstance(schema, Mapping) and isinstance(config.get("responseSchema"), Mapping):
            schema = from_gemini_schema(config["responseSchema"])
        out["response_format"] = ({"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
                                  if isinstance(schema, Mapping) else {"type": "json_object"})


def to_chat_request(body: Mapping[str, Any], model: str, stream: bool) -> dict[str, Any]:
    """A GenerateContentRequest body -> an OpenAI chat/completions body (raises InvalidRequest)."""
    messages: list[dict[str, Any]] = []
    system = body.get("systemInstruction")
    if isinstance(system, str):
        messages.append({"role": "system", "content": system})
    elif system is not None:
        text = _text(_parts(system, "system_instruction"))
        if text:
            messages.append({"role": "system", "content": text})
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise InvalidRequest("* GenerateContentRequest.contents: contents is not specified")
    calls = _Calls()
    for i, content in enumerate(contents):
        where = f"contents[{i}]"
        parts = _parts(content, where)
        role = content.get("role") or "user"
        if role == "model":
            msg = _model_turn(parts, i, calls)
            if msg is not None:
                messages.append(msg)
        elif role in ("user", "function", "tool"):
            messages.extend(_user_turn(parts, where, calls))
        else:
            raise InvalidRequest(f"Please use a valid role: user, model. ('{where}.role' is {role!r})")
    out: dict[str, Any] = {"model": model, "messages": messages}
    tools = _tools(body)
    if tools:
        out["tools"] = tools
        choice = _tool_choice(body)
        if choice is not None:
            out["tool_choice"] = choice
    _generation_config(body.get("generationConfig"), out)
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _content_text(content: Any, where: str) -> str:
    parts = _parts(content, where)
    if any(not isinstance(p.get("text"), str) for p in parts):
        raise InvalidRequest(f"Invalid value at '{where}': this model embeds text parts only.")
    return "".join(p["text"] for p in parts)


def to_embeddings_request(body: Mapping[str, Any], model: str, batch: bool) -> dict[str, Any]:
    """An embedContent / batchEmbedContents body -> an OpenAI /embeddings body."""
    if batch:
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests or not all(isinstance(r, Mapping) for r in requests):
            raise InvalidRequest("* BatchEmbedContentsRequest.requests: requests is not specified")
        inputs = [_content_text(r.get("content"), f"requests[{i}].content") for i, r in enumerate(requests)]
        dims = requests[0].get("outputDimensionality")
    else:
        inputs = [_content_text(body.get("content"), "content")]
        dims = body.get("outputDimensionality")
    out: dict[str, Any] = {"model": model, "input": inputs}
    if isinstance(dims, int) and dims > 0:
        out["dimensions"] = dims
    return out
