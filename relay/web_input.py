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
from aiohttp.http_exceptions import HttpProcessingError

from .errors import InvalidRequest, PayloadTooLarge, RelayError
from .types import FormField

__all__ = [
    "BODY_BUDGET", "DEFAULT_IMAGE_MODEL", "MAX_MODEL_CHARS", "BodyBudget", "check_model_name", "close_form",
    "image_form", "parse_json", "read_body", "read_form", "validate", "validate_messages", "validate_rerank",
]

_MAX_FORM_FIELD = 64 * 1024  # a non-file multipart field (model, prompt, language...)
_SPOOL_IN_MEMORY = 1024 * 1024  # an upload is kept in memory up to this, then on disk
# A model name is stored (ledger) and echoed (errors): the longest real ones are under 100 characters.
MAX_MODEL_CHARS = 256


class BodyBudget:
    """Request body bytes held in memory by requests in flight, against a cap (server.max_inflight_body_bytes).

    Each body is held until its request ends (it is what goes upstream): `take` notes it on the request and
    the app's middleware calls `release` when the handler is done, whatever way it ends. Past the cap a new
    body is refused with 503 and Retry-After rather than queued: the memory a burst of large bodies can take
    is bounded.
    """

    __slots__ = ("cap", "held")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.held = 0

    def take(self, request: web.Request, n: int) -> None:
        if self.held + n > self.cap and self.held:  # one body alone always fits: max_body_bytes bounds it
            raise RelayError(
                "The relay is holding as many request bodies as its memory allows; retry shortly.",
                status=503, code="relay_overloaded", headers={"Retry-After": "1"},
            )
        self.held += n
        request[_HELD] = request.get(_HELD, 0) + n

    def release(self, request: web.Request) -> None:
        """Give back what the request's bodies held (its handler has ended)."""
        n = request.get(_HELD)
        if n:
            self.held -= n
            request[_HELD] = 0


_HELD = web.RequestKey("body_bytes_held", int)
BODY_BUDGET = web.AppKey("body_budget", BodyBudget)


def check_model_name(model: str) -> str:
    if len(model) > MAX_MODEL_CHARS:
        raise InvalidRequest(
            f"'model' is {len(model)} characters long; the limit is {MAX_MODEL_CHARS}.", param="model",
            code="invalid_value",
        )
    return model


def validate_messages(data: dict[str, Any], max_tokens: bool = True) -> str:
    """The fields of a Messages request the relay itself reads or the API always requires (a token count
    takes no max_tokens)."""
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: Field required (a non-empty string).", param="model")
    if len(model) > MAX_MODEL_CHARS:
        raise InvalidRequest(f"model: String should have at most {MAX_MODEL_CHARS} characters.", param="model")
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
    budget = request.app.get(BODY_BUDGET)
    if budget is not None:
        budget.take(request, limit if length is None else length)  # chunked: its size is known only at the end
    if length is not None and request.content.is_eof():
        return await request.read()  # already all here (the usual small request): no deadline to arm
    try:
        async with asyncio.timeout(timeout):
            if length is not None:
                return await _read_into(request, length)
            parts: list[bytes] = []
            size = 0
            async for piece in request.content.iter_any():
                size += len(piece)
                if size > limit:
                    raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
                parts.append(piece)
    except TimeoutError:
        raise RelayError("The request body was not received in time.", status=408, code="request_timeout") from None
    return b"".join(parts) if len(parts) != 1 else parts[0]


async def _read_into(request: web.Request, length: int) -> bytes:
    """A body of known length, each piece copied once into its place: a large body is held once, not as
    pieces plus their join (a bytearray: everything downstream reads it as bytes)."""
    buf = bytearray(length)
    with memoryview(buf) as view:
        pos = 0
        async for piece in request.content.iter_any():
            end = pos + len(piece)
            if end > length:  # aiohttp stops at Content-Length; this only guards the slice
                raise InvalidRequest("The request body is longer than its Content-Length.")
            view[pos:end] = piece
            pos = end
    if pos != length:
        raise InvalidRequest("The request body ended before its Content-Length.")
    return buf  # type: ignore[return-value]


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
    check_model_name(model)
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
    if endpoint == "rerank":
        validate_rerank(data)
    for name in ("max_tokens", "max_completion_tokens", "n"):
        value = data.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise InvalidRequest(f"'{name}' must be a non-negative integer.", param=name, code="invalid_type")
    return model, stream, wants_usage


def validate_rerank(data: dict[str, Any]) -> None:
    """A rerank body as Jina and Cohere take it: a query, documents (strings or {"text"} objects), top_n."""
    query = data.get("query")
    if not isinstance(query, str) or not query:
        raise InvalidRequest("'query' must be a non-empty string.", param="query", code="invalid_type")
    docs = data.get("documents")
    if not isinstance(docs, list) or not docs:
        raise InvalidRequest("'documents' must be a non-empty array.", param="documents", code="invalid_type")
    for i, doc in enumerate(docs):
        if not (isinstance(doc, str) or (isinstance(doc, dict) and isinstance(doc.get("text"), str))):
            raise InvalidRequest(f"documents[{i}] must be a string or an object with a 'text' string.",
                                 param="documents", code="invalid_type")
    top_n = data.get("top_n")
    if top_n is not None and (not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 1):
        raise InvalidRequest("'top_n' must be a positive integer.", param="top_n", code="invalid_type")
    if not isinstance(data.get("return_documents", False), bool):
        raise InvalidRequest("'return_documents' must be a boolean.", param="return_documents", code="invalid_type")


async def read_form(
    request: web.Request, limit: int, timeout: float, file_param: str = "file"
) -> tuple[FormField, ...]:
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
    except (ValueError, AssertionError, HttpProcessingError):  # a part's headers unreadable: InvalidHeader...
        close_form(fields)
        raise InvalidRequest("The multipart body is malformed.", code="invalid_multipart") from None
    except BaseException:
        close_form(fields)
        raise
    if not any(f.spool is not None for f in fields):
        close_form(fields)
        raise InvalidRequest("The upload has no file part.", param=file_param, code="missing_required_parameter")
    return tuple(fields)


# OpenAI's limits: up to 16 input images for an edit, one for a variation, n from 1 to 10.
_MAX_EDIT_IMAGES = 16
_MAX_N = 10
# The API's default model for edits and variations when the form names none.
DEFAULT_IMAGE_MODEL = "dall-e-2"


def image_form(endpoint: str, form: tuple[FormField, ...]) -> tuple[tuple[FormField, ...], str, dict[str, Any]]:
    """Check an image edit or variation upload: its image parts (`image`, or `image[]` repeated), at most one
    mask, a prompt for edits, `n`. Returns the form (with the default model made explicit when it named
    none, so the channel's model_map applies), the model, and the text fields billing and limits read."""
    params: dict[str, Any] = {f.name: f.value.decode("utf-8", "replace") for f in form if f.filename is None}
    images = sum(1 for f in form if f.filename is not None and f.name in ("image", "image[]"))
    most = 1 if endpoint == "images/variations" else _MAX_EDIT_IMAGES
    if not images:
        raise InvalidRequest("The upload has no 'image' file part.", param="image", code="missing_required_parameter")
    if images > most:
        raise InvalidRequest(f"At most {most} image(s) may be given to /v1/{endpoint}.", param="image")
    if sum(1 for f in form if f.name == "mask") > 1:
        raise InvalidRequest("At most one 'mask' may be given.", param="mask")
    if endpoint == "images/edits" and not params.get("prompt"):
        raise InvalidRequest("Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter")
    if "n" in params:
        try:
            n = int(params["n"])
        except ValueError:
            n = 0
        if not 1 <= n <= _MAX_N:
            raise InvalidRequest(f"'n' must be an integer from 1 to {_MAX_N}.", param="n", code="invalid_type")
        params["n"] = n
    model = params.get("model") or ""
    if not model:
        model = params["model"] = DEFAULT_IMAGE_MODEL
        form = (*(f for f in form if f.name != "model"), FormField("model", model.encode()))
    return form, model, params


def close_form(fields: list[FormField]) -> None:
    for f in fields:
        if f.spool is not None:
            f.spool.close()
