"""OpenAI chat/completions bodies -> Gemini GenerateContentRequest bodies, for channels of type `gemini`. Pure.

Messages become `contents` turns and a `systemInstruction`, tools `functionDeclarations`, and sampling,
stop, response_format and reasoning settings `generationConfig` (the rules: relay/adapters/gemini.py).

JSON Schemas (tool parameters, response_format json_schema) are reduced to the OpenAPI 3.0 subset the
Gemini `Schema` object accepts: `additionalProperties`, `$schema`, `$id`, `$ref`, `$defs`, `definitions`,
`strict`, `default`, `title`, `examples`, `allOf`, `not`, `if/then/else`, `patternProperties` and any other
unknown keyword are dropped; `oneOf` becomes `anyOf`; `const` becomes a one-value `enum`; a type list such
as ["string", "null"] becomes the type plus `nullable: true`; enum values are sent as strings; an object
without properties as a whole function's parameters is left out (Gemini refuses an empty OBJECT).
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Mapping
from typing import Any

import orjson

from ..errors import InvalidRequest
from ..types import ModelReasoning
from .thinking import gemini_thinking_config

__all__ = ["TOOL_CHOICE_MODES", "clean_schema", "to_gemini_contents", "to_gemini_request"]

TOOL_CHOICE_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}

# The keywords of Gemini's Schema object (an OpenAPI 3.0 subset) that a JSON Schema can carry over as-is.
_SCHEMA_KEEP = frozenset({
    "format", "description", "nullable", "maxItems", "minItems", "minProperties", "maxProperties",
    "minLength", "maxLength", "pattern", "example", "minimum", "maximum", "propertyOrdering",
})
_TYPES = frozenset({"string", "number", "integer", "boolean", "array", "object"})

_DATA_URI = re.compile(r"data:([^;,]+)?(?:;[^,]*?)?;base64,(.*)", re.S)


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
