"""Token counts when the upstream reports none. Pure.

A request that ends without the upstream's usage (the client left mid-stream, the stream was cut off, the
upstream offers no usage) is charged its prompt and the completion text the client actually received,
both counted with the model's tokenizer (relay.tokens): never zero when text was delivered, never the
whole max_tokens, never an error message. Before a request is relayed, `estimate_prompt_tokens` gives a
cheap upper-side figure (a token per four bytes of body) for reserving its worst-case cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from .tokens import CompletionCounter, prompt_tokens
from .types import RelayRequest, Usage

__all__ = ["estimate_prompt_tokens", "estimate_usage", "request_prompt_tokens", "usage_when_missing"]

# Events in an OpenAI chat stream that carry no completion token: the role chunk, the finish chunk, [DONE].
_FRAME_EVENTS = 3


class _CountsCompletion(Protocol):
    @property
    def completion(self) -> CompletionCounter: ...


def estimate_prompt_tokens(req: RelayRequest) -> int:
    """About one token per four bytes of body: no tokenizer on the request path (reservation only)."""
    size = len(req.body) if req.body else sum(len(f.value) for f in req.form)
    return max(1, size // 4)


def request_prompt_tokens(req: RelayRequest) -> int:
    """The request's prompt tokens, counted with the model's tokenizer (multipart: its text fields)."""
    body: Mapping[str, Any] | None = req.json
    if body is None and req.form:
        body = {f.name: f.value.decode("utf-8", "replace") for f in req.form if f.filename is None}
    if body is None:
        return estimate_prompt_tokens(req) if req.body else 0
    return prompt_tokens(req.endpoint, body)


def usage_when_missing(req: RelayRequest, completion_tokens: int | None) -> Usage:
    """The usage to record when the upstream reported none.

    completion_tokens: what the client received, e.g. `handler.completion.tokens(req.model)` for a stream;
    None when unknown (a non-stream response).
    """
    return Usage(request_prompt_tokens(req), completion_tokens or 0, "estimate")


def estimate_usage(req: RelayRequest, stream: _CountsCompletion | int | None = None) -> Usage:
    """usage_when_missing with the completion read from a stream handler's counter.

    An int is the old calling convention (the stream's event count): the completion is then estimated as
    one token per content event.
    """
    if isinstance(stream, int):
        completion = max(0, stream - _FRAME_EVENTS) if req.stream else 0
        return usage_when_missing(req, completion)
    counter = getattr(stream, "completion", None)
    if not isinstance(counter, CompletionCounter):
        return usage_when_missing(req, None)
    return usage_when_missing(req, counter.tokens(req.model))
