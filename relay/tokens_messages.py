"""Input tokens of an Anthropic Messages request, counted locally (POST /v1/messages/count_tokens served by a
channel that has no counting endpoint of its own). Pure.

Text (system, message text, thinking, tool results) is counted with the relay's tokenizer (relay.tokens:
o200k_base, the closest public approximation for other vendors' models); tool definitions and tool_use
inputs as their JSON. Images follow Anthropic's published estimate, (width * height) / 750 tokens after
the image is scaled to fit 1568 px on its long edge and about 1.15 megapixels; the size is read from the
header of a base64 image (PNG, JPEG, GIF, WebP). An image whose size cannot be known (a URL source, an
unreadable header) counts IMAGE_UNKNOWN_TOKENS, the estimate for the largest image that is not scaled.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Mapping
from typing import Any

import orjson

from .tokens import count_text

__all__ = ["IMAGE_UNKNOWN_TOKENS", "count_messages_tokens", "image_size", "image_tokens"]

# Anthropic: images are scaled to at most 1568 px on the long edge and about 1.15 megapixels, where they
# cost about 1,600 tokens ((width * height) / 750).
_MAX_EDGE = 1568
_MAX_PIXELS = 1_150_000
IMAGE_UNKNOWN_TOKENS = 1600
# Framing per message (role and turn markers) and once per request, as the chat counting recipe does.
_PER_MESSAGE = 3
_PER_REQUEST = 3
# Base64 characters decoded to find an image's size: JPEG's SOF marker may follow large EXIF blocks.
_HEADER_CHARS = 96 * 1024


def image_tokens(width: int, height: int) -> int:
    """Anthropic's estimate for an image of this size, after the API's own downscaling."""
    if width <= 0 or height <= 0:
        return IMAGE_UNKNOWN_TOKENS
    scale = min(1.0, _MAX_EDGE / max(width, height), math.sqrt(_MAX_PIXELS / (width * height)))
    w, h = width * scale, height * scale
    return max(1, math.ceil(w * h / 750))


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first bytes of a PNG, JPEG, GIF or WebP file; None if it is none of these."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return w, h
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        w, h = struct.unpack("<HH", data[6:10])
        return w, h
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP" and len(data) >= 30:
        kind = data[12:16]
        if kind == b"VP8X":
            return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
        if kind == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
        if kind == b"VP8 ":
            w, h = struct.unpack("<HH", data[26:30])
            return w & 0x3FFF, h & 0x3FFF
        return None
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        # SOF0..SOF15 but DHT (C4), JPG (C8) and DAC (CC): height then width
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        i += 2 + length
    return None


def _image(block: Mapping[str, Any]) -> int:
    src = block.get("source")
    if not isinstance(src, Mapping) or src.get("type") != "base64" or not isinstance(src.get("data"), str):
        return IMAGE_UNKNOWN_TOKENS
    head = src["data"][:_HEADER_CHARS]
    head = head[: len(head) - len(head) % 4]
    try:
        size = image_size(base64.b64decode(head, validate=False))
    except (binascii.Error, ValueError, struct.error):
        size = None
    return image_tokens(*size) if size else IMAGE_UNKNOWN_TOKENS


def _json(value: Any, model: str) -> int:
    return count_text(orjson.dumps(value).decode(), model)


def _content(content: Any, model: str) -> int:
    if isinstance(content, str):
        return count_text(content, model)
    if not isinstance(content, list):
        return 0
    n = 0
    for block in content:
        if not isinstance(block, Mapping):
            continue
        kind = block.get("type")
        if kind == "text":
            n += count_text(str(block.get("text") or ""), model)
        elif kind == "image":
            n += _image(block)
        elif kind == "thinking":
            n += count_text(str(block.get("thinking") or ""), model)
        elif kind == "tool_use":
            n += count_text(str(block.get("name") or ""), model) + _json(block.get("input") or {}, model)
        elif kind == "tool_result":
            n += _content(block.get("content"), model)
        elif kind == "document":
            src = block.get("source")
            if isinstance(src, Mapping) and src.get("type") == "text":
                n += count_text(str(src.get("data") or ""), model)
            else:
                n += _json(block, model) // 4  # a PDF or other file: its size, roughly
    return n


def count_messages_tokens(body: Mapping[str, Any], model: str) -> int:
    """The input tokens of a Messages request body: system, messages, tools (and images in them)."""
    n = _PER_REQUEST + _content(body.get("system"), model)
    for message in body.get("messages") or ():
        if isinstance(message, Mapping):
            n += _PER_MESSAGE + _content(message.get("content"), model)
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        n += _json(tools, model)
    return n
