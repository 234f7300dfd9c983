"""Token counts with OpenAI's own tokenizers, for requests whose upstream reported no usage.

The o200k_base and cl100k_base encodings are tiktoken's, built from the rank files shipped in the package
(relay.tokenizer: sha256-checked, then checked against known counts), so counting never downloads
anything. An encoding is loaded on first use (about 0.4 s for o200k_base) and kept for the life of the
process; `preload` does it up front, and raises TokenizerError (a ConfigError) rather than let the relay
bill on an estimate when the tokenizer is damaged or missing.

Nothing here is on the per-event path: a stream hands the raw JSON string values its client received
to a `CompletionCounter` in batches, which decodes and tokenizes them 16 KiB at a time and at the end, when
someone asks for the count.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import orjson

from .tokenizer import CL100K, O200K, Encoder, TokenizerError, load

__all__ = [
    "CompletionCounter",
    "count_text",
    "encoding_name",
    "preload",
    "prompt_tokens",
]

# Models tokenized with cl100k_base (GPT-3.5, GPT-4 before 4o, the embedding models). Every other model,
# OpenAI's newer ones and other vendors' alike, is counted with o200k_base: exact for gpt-4o, gpt-4.1,
# gpt-5 and the o-series, and the closest public approximation for the rest.
_CL100K_PREFIXES = ("gpt-3.5", "gpt-35", "text-embedding-", "text-davinci", "davinci", "babbage")

# OpenAI's chat counting recipe: every message costs 3 tokens of framing (plus 1 for a `name`), and the
# reply is primed with 3 more (<|start|>assistant<|message|>).
_PER_MESSAGE = 3
_PER_NAME = 1
_REPLY_PRIMER = 3

# An image part without its pixels: 85 tokens at low detail; otherwise a 1024x1024 image (scaled to
# 768x768: four 512-px tiles at 170 tokens each, plus the 85 base).
IMAGE_LOW_TOKENS = 85
IMAGE_TOKENS = 85 + 4 * 170

# A completion counter tokenizes once this many raw bytes are held...
_BATCH_BYTES = 16 * 1024
# ...and holds back at most this many characters waiting for a space to cut at (text without spaces,
# such as Chinese, is cut anywhere past it: a token or two of error per 64 K characters).
_HOLD_CHARS = 64 * 1024


def encoding_name(model: str) -> str:
    m = model.lower().rsplit("/", 1)[-1]
    if m.startswith(_CL100K_PREFIXES):
        return CL100K
    if m.startswith("gpt-4") and not m.startswith(("gpt-4o", "gpt-4.")):
        return CL100K  # gpt-4, gpt-4-turbo, gpt-4-32k; not gpt-4o, gpt-4.1, gpt-4.5
    return O200K


@functools.cache
def _encoding(name: str) -> Encoder:
    return load(name)  # raises TokenizerError (not cached: the next call tries again)


def preload(*models: str) -> None:
    """Load and check the encodings these models use (both when none is named), so no request waits for it.

    Raises TokenizerError when one cannot be loaded or fails its check: the relay must not start then.
    """
    for name in {encoding_name(m) for m in models} if models else (O200K, CL100K):
        _encoding(name)


def count_text(text: str, model: str) -> int:
    """Tokens in text as the model's tokenizer counts it (special-token text counts as plain text).

    A lone surrogate (from a \\ud83d escape) counts as U+FFFD.
    """
    if not text:
        return 0
    return len(_encoding(encoding_name(model)).encode_ordinary(text))


# -- prompts ----------------------------------------------------------------------------------------------


class _Malformed(Exception):
    pass


def prompt_tokens(endpoint: str, body: Mapping[str, Any] | None) -> int:
    """The prompt tokens of a request body, as the upstream would count them (about).

    Any shape this does not understand is counted as one token per four bytes of its JSON; it never raises
    once `preload` has succeeded.
    """
    if body is None:
        return 0
    if not isinstance(body, Mapping):
        return _approx(body)
    try:
        model = body.get("model")
        return _prompt(endpoint, body, model if isinstance(model, str) else "")
    except TokenizerError:
        raise  # no tokenizer is no estimate: preload refuses to start without one
    except Exception:
        return _approx(body)


def _prompt(endpoint: str, body: Mapping[str, Any], model: str) -> int:
    if endpoint == "chat/completions":
        return _chat(body, model)
    if endpoint == "completions":
        return _inputs(body.get("prompt"), model) + _text(body.get("suffix"), model)
    if endpoint == "embeddings":
        return _inputs(body.get("input"), model)
    if endpoint == "moderations":
        return _moderation(body.get("input"), model)
    if endpoint == "rerank":
        docs = body.get("documents") or ()
        return _text(body.get("query"), model) + sum(
            _text(d.get("text") if isinstance(d, Mapping) else d, model) for d in docs
        )
    if endpoint.startswith("images/"):
        return _text(body.get("prompt"), model)
    if endpoint == "audio/speech":
        return _text(body.get("input"), model)  # priced per character elsewhere; this is the token view
    if endpoint in ("audio/transcriptions", "audio/translations"):
        return _text(body.get("prompt"), model)  # the audio is priced per minute
    if endpoint.startswith("gemini/"):
        return _gemini(body, model)
    return _approx(body)


def _text(value: object, model: str) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return count_text(value, model)
    raise _Malformed


def _json(value: object, model: str) -> int:
    return count_text(orjson.dumps(value).decode(), model)


def _inputs(value: object, model: str) -> int:
    """A prompt or embeddings input: a string, strings, token ids or lists of token ids."""
    if value is None:
        return 0
    if isinstance(value, str):
        return count_text(value, model)
    if not isinstance(value, list):
        raise _Malformed
    n = 0
    for item in value:
        if isinstance(item, str):
            n += count_text(item, model)
        elif isinstance(item, int):
            n += 1
        elif isinstance(item, list):
            n += len(item)
        else:
            raise _Malformed
    return n


def _moderation(value: object, model: str) -> int:
    if value is None or isinstance(value, str):
        return _text(value, model)
    if not isinstance(value, list):
        raise _Malformed
    return sum(_part(p, model) for p in value)


def _part(part: object, model: str) -> int:
    """One part of a multimodal content list."""
    if isinstance(part, str):
        return count_text(part, model)
    if not isinstance(part, Mapping):
        raise _Malformed
    kind = part.get("type")
    if kind == "image_url" or kind == "input_image":
        image = part.get("image_url")
        detail = image.get("detail") if isinstance(image, Mapping) else part.get("detail")
        return IMAGE_LOW_TOKENS if detail == "low" else IMAGE_TOKENS
    for key in ("text", "refusal"):
        value = part.get(key)
        if isinstance(value, str):
            return count_text(value, model)
    return 0  # audio and file parts: not priced per text token, and not estimated


def _chat(body: Mapping[str, Any], model: str) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise _Malformed
    n = _REPLY_PRIMER
    for message in messages:
        if not isinstance(message, Mapping):
            raise _Malformed
        n += _PER_MESSAGE
        for key, value in message.items():
            if key == "content" and isinstance(value, list):
                n += sum(_part(p, model) for p in value)
            elif isinstance(value, str):
                n += count_text(value, model)
                if key == "name":
                    n += _PER_NAME
            elif isinstance(value, (Mapping, list)):
                n += _json(value, model)  # tool_calls, function_call
    for key in ("tools", "functions"):
        defs = body.get(key)
        if defs:
            n += _json(defs, model)
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        n += _json(fmt.get("json_schema"), model)
    return n


def _gemini_content(content: object, model: str) -> int:
    """One Gemini Content: text parts counted, media parts as an image, calls and results as their JSON."""
    if not isinstance(content, Mapping):
        raise _Malformed
    n = _PER_MESSAGE
    for part in content.get("parts") or ():
        if not isinstance(part, Mapping):
            raise _Malformed
        if isinstance(part.get("text"), str):
            n += count_text(part["text"], model)
        elif "inlineData" in part or "fileData" in part:
            n += IMAGE_TOKENS
        else:
            n += _json(part, model)  # functionCall, functionResponse, executableCode ...
    return n


def _gemini(body: Mapping[str, Any], model: str) -> int:
    """A Gemini request (generateContent, countTokens, embedContent, batchEmbedContents)."""
    inner = body.get("generateContentRequest")
    if isinstance(inner, Mapping):
        body = inner
    contents = list(body.get("contents") or ())
    contents += [r.get("content") for r in body.get("requests") or () if isinstance(r, Mapping)]
    if body.get("content") is not None:
        contents.append(body["content"])
    system = body.get("systemInstruction")
    if system is not None:
        contents.append({"parts": [{"text": system}]} if isinstance(system, str) else system)
    n = _REPLY_PRIMER + sum(_gemini_content(c, model) for c in contents)
    if body.get("tools"):
        n += _json(body["tools"], model)
    return n


def _approx(body: object) -> int:
    try:
        size = len(orjson.dumps(body, default=str, option=orjson.OPT_NON_STR_KEYS))
    except Exception:
        size = len(repr(body))
    return max(1, size // 4)


# -- completions ------------------------------------------------------------------------------------------


class CompletionCounter:
    """Counts the tokens of a streamed completion, from the raw JSON string fragments the client received.

    Memory stays bounded: once 16 KiB of fragments are held they are decoded, cut at the last space that
    starts a word (where the tokenizer always splits, so counts add up exactly) and counted; only the text
    after the cut is kept. Most streams end with the upstream's usage and `tokens` is never called: then
    nothing is ever decoded or tokenized below 16 KiB.
    """

    __slots__ = ("_counted", "_parts", "_rest", "_size", "model", "raw_bytes")

    def __init__(self, model: str = "") -> None:
        self.model = model  # the encoding used for batches counted mid-stream
        self.raw_bytes = 0  # bytes of fragments fed (escaped form): > 0 means text was delivered
        self._parts: list[bytes] = []
        self._size = 0
        self._rest = ""
        self._counted = 0

    def add(self, raw: bytes) -> None:
        """One JSON string value's raw body (without quotes, escapes as written)."""
        self.extend([raw])

    def extend(self, raws: list[bytes]) -> None:
        """Raw bodies in the order the client received them (empty ones are fine)."""
        self._parts += raws
        size = sum(map(len, raws))
        self._size += size
        self.raw_bytes += size
        if self._size > _BATCH_BYTES:
            self._count(self.model, final=False)

    def tokens(self, model: str | None = None) -> int:
        """Tokens of everything fed so far; model defaults to the one given at construction."""
        if self._parts or self._rest:
            self._count(self.model if model is None else model, final=True)
        return self._counted

    @property
    def held(self) -> int:
        """Bytes and characters held uncounted (for tests: stays bounded)."""
        return self._size + len(self._rest)

    def _count(self, model: str, final: bool) -> None:
        text = self._rest + _decode(self._parts)
        self._parts, self._size = [], 0
        cut = len(text) if final else _cut_point(text)
        if cut == 0 and len(text) > _HOLD_CHARS:
            cut = len(text)
        if cut:
            self._counted += count_text(text[:cut], model)
        self._rest = text[cut:]


def _decode(parts: list[bytes]) -> str:
    if not parts:
        return ""
    try:
        return orjson.loads(b'"' + b"".join(parts) + b'"')  # type: ignore[no-any-return]
    except orjson.JSONDecodeError:
        pass
    out = []  # one bad fragment (a lone surrogate escape, invalid UTF-8) spoils only itself
    for raw in parts:
        try:
            out.append(orjson.loads(b'"' + raw + b'"'))
        except orjson.JSONDecodeError:
            out.append(raw.decode("utf-8", "replace"))
    return "".join(out)


def _cut_point(text: str) -> int:
    """Offset of the last space that follows a non-space (0 if none).

    Both tokenizers' pre-split patterns always end a piece before such a space (a space is only ever the
    first character of a piece, or part of a run of whitespace), so text[:i] and text[i:] count to the
    same total as text.
    """
    i = text.rfind(" ")
    while i > 0 and text[i - 1].isspace():
        i = text.rfind(" ", 0, i)
    return max(i, 0)
