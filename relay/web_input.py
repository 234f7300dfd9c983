"""What the client sent, read once: bodies within their limits and time, JSON parsed, the fields the relay
itself reads checked (everything else passes through untouched), multipart uploads spooled to disk.

Every problem is a RelayError in OpenAI's shape (the route's dialect renders it), raised before any
upstream is contacted.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

from .errors import InvalidRequest, PayloadTooLarge, RelayError
from .types import FormField

__all__ = ["close_form", "parse_json", "read_body", "read_form", "validate", "validate_messages"]

_MAX_FORM_FIELD = 64 * 1024  # a non-file multipart field (model, prompt, language...)
_SPOOL_IN_MEMORY = 1024 * 1024  # an upload is kept in memory up to this, then on disk


def validate_messages(data: dict[str, Any], max_tokens: bool = True) -> str:
    """The fields of a Messages request the relay itself reads or the API always requires (a token count
    takes no max_tokens)."""
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: Field required (a non-empty string).", param="model")
    limit = data.get("max_tokens")
    if max_tokens and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise InvalidRequest("max_tokens: Field required (an integer of at least 1).", param="max_tokens")
    messages = data.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InvalidRequest("messages: Field required (an array of message objects).", param="messages")
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("stream: Input should be a valid boolean.", param="stream")
    return model


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """The whole body, refusing one over `limit` without reading it (Content-Length) or past it (chunked)."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"Request body is {length} bytes; the limit is {limit} bytes.")
    if length is not None and request.content.is_eof():
        return await request.read()  # already all here (the usual small request): no deadline to arm
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for piece in request.content.iter_any():
                size += len(piece)
                if size > limit:
                    raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
                parts.append(piece)
    except TimeoutError:
        raise RelayError("The request body was not received in time.", status=408, code="request_timeout") from None
    return b"".join(parts) if len(parts) != 1 else parts[0]


def parse_json(body: bytes) -> dict[str, Any]:
    if not body:
        raise InvalidRequest("The request body is empty; a JSON object is required.")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        text = str(e)
        if "recursion" in text.lower():
            msg = "The request body is nested too deeply."
        elif "utf-8" in text.lower() or "surrogates" in text.lower():
            msg = "The request body is not valid UTF-8."
        else:
            msg = f"The request body is not valid JSON ({text.split(':', 1)[0]})."
        raise InvalidRequest(msg, code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return data


def validate(endpoint: str, data: dict[str, Any]) -> tuple[str, bool, bool]:
    """Check the fields the relay itself reads; everything else passes through untouched."""
    model = data.get("model")
    if model is None or model == "":
        raise InvalidRequest("You must provide a model parameter.", param="model", code="missing_required_parameter")
    if not isinstance(model, str):
        raise InvalidRequest("'model' must be a string.", param="model", code="invalid_type")
    stream = data.get("stream")
    if stream is None:
        stream = False
    elif not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream", code="invalid_type")
    options = data.get("stream_options")
    wants_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise InvalidRequest("'stream_options' must be an object.", param="stream_options", code="invalid_type")
        include = options.get("include_usage")
        if include is not None and not isinstance(include, bool):
            raise InvalidRequest(
                "'stream_options.include_usage' must be a boolean.", param="stream_options.include_usage",
                code="invalid_type",
            )
        wants_usage = bool(include)
    if endpoint == "chat/completions":
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("'messages' must be a non-empty array.", param="messages", code="invalid_type")
        if not all(isinstance(m, dict) for m in messages):
            raise InvalidRequest("Each message must be an object.", param="messages", code="invalid_type")
    for name in ("max_tokens", "max_completion_tokens", "n"):
        value = data.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise InvalidRequest(f"'{name}' must be a non-negative integer.", param=name, code="invalid_type")
    return model, stream, wants_usage


async def read_form(request: web.Request, limit: int, timeout: float) -> tuple[FormField, ...]:
    """Read a multipart upload: small fields in memory, file parts spooled (to disk past 1 MiB)."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"Upload is {length} bytes; the limit is {limit} bytes.")
    fields: list[FormField] = []
    total = 0
    try:
        async with asyncio.timeout(timeout):
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader) or not part.name:
                    raise InvalidRequest("Nested or unnamed multipart parts are not supported.")
                if part.filename is None:
                    value = await part.read(decode=False)
                    total += len(value)
                    if len(value) > _MAX_FORM_FIELD:
                        raise PayloadTooLarge(f"Form field '{part.name}' is too large.")
                    fields.append(FormField(part.name, bytes(value)))
                    continue
                spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY, dir=os.environ.get("RELAY_SPOOL_DIR"))
                fields.append(FormField(part.name, b"", part.filename, part.headers.get("Content-Type"), spool))
                while piece := await part.read_chunk(65536):
                    total += len(piece)
                    if total > limit:
                        raise PayloadTooLarge(f"Upload exceeds the limit of {limit} bytes.")
                    spool.write(piece)
    except TimeoutError:
        close_form(fields)
        raise RelayError("The upload was not received in time.", status=408, code="request_timeout") from None
    except (ValueError, AssertionError):
        close_form(fields)
        raise InvalidRequest("The multipart body is malformed.") from None
    except BaseException:
        close_form(fields)
        raise
    if not any(f.spool is not None for f in fields):
        close_form(fields)
        raise InvalidRequest("The upload has no file part.", param="file", code="missing_required_parameter")
    return tuple(fields)


def close_form(fields: list[FormField]) -> None:
    for f in fields:
        if f.spool is not None:
            f.spool.close()
