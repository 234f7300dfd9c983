"""Token counts when the upstream reports none. Pure.

The estimate errs on the side the client can check: a prompt counts about one token per four bytes of
its JSON body, and a streamed completion one token per content event (providers stream about one token
per event). Exact tokenization is the billing module's concern.
"""

from __future__ import annotations

from .types import RelayRequest, Usage

__all__ = ["estimate_usage"]

# Events in an OpenAI chat stream that carry no completion token: the role chunk, the finish chunk, [DONE].
_FRAME_EVENTS = 3


def estimate_prompt_tokens(req: RelayRequest) -> int:
    size = len(req.body) if req.body else sum(len(f.value) for f in req.form)
    return max(1, size // 4)


def estimate_usage(req: RelayRequest, stream_events: int = 0) -> Usage:
    completion = max(0, stream_events - _FRAME_EVENTS) if req.stream else 0
    return Usage(estimate_prompt_tokens(req), completion, "estimate")
