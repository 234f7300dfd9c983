"""Reasoning and prompt-cache fields carried between dialects. Pure.

Reasoning effort (OpenAI's `reasoning_effort`: none, minimal, low, medium, high, xhigh) becomes, by the
model's style in the config's reasoning table (relay.types.ReasoningTable):

    budget    Claude: thinking {"type": "enabled", "budget_tokens": B}    Gemini: thinkingConfig.thinkingBudget B
    adaptive  Claude: thinking {"type": "adaptive"} + output_config.effort (minimal -> low, xhigh -> max)
    level     Gemini: thinkingConfig.thinkingLevel (none, minimal, low -> low; medium, high, xhigh -> high)
    effort    OpenAI: reasoning_effort (what /v1/messages' `thinking` becomes on OpenAI channels)

Claude's thinking blocks travel on OpenAI messages as LiteLLM carries them: `reasoning_content` (the text) and
`thinking_blocks` ([{"type": "thinking", "thinking", "signature"}, {"type": "redacted_thinking", "data"}]),
on the message and on stream deltas. In a stream each thinking delta is one partial block and the block
ends with the delta that carries its `signature`; a client joins the partial texts up to it.

`cache_control` on OpenAI content parts, on a message (its last block) and on tools is carried to the
Anthropic blocks as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import InvalidRequest
from ..types import ModelReasoning

__all__ = [
    "ANTHROPIC_MIN_BUDGET",
    "apply_anthropic_thinking",
    "cache_control",
    "effort_of",
    "from_anthropic_blocks",
    "gemini_thinking_config",
    "openai_effort",
    "thinking_blocks_of",
]

ANTHROPIC_MIN_BUDGET = 1024  # the API refuses a smaller budget_tokens
_ADAPTIVE_EFFORT = {"minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "max"}
_LEVEL = {"minimal": "low", "low": "low", "medium": "high", "high": "high", "xhigh": "high"}
# Sampling parameters Claude refuses while thinking.
_NOT_WHILE_THINKING = ("temperature", "top_p", "top_k")


def effort_of(body: Mapping[str, Any]) -> str | None:
    """The request's reasoning effort: chat's `reasoning_effort` (or a Responses-style `reasoning.effort`)."""
    effort = body.get("reasoning_effort")
    if effort is None and isinstance(body.get("reasoning"), Mapping):
        effort = body["reasoning"].get("effort")
    if effort is None:
        return None
    if not isinstance(effort, str):
        raise InvalidRequest("'reasoning_effort' must be a string.", param="reasoning_effort")
    return effort


def _budget(effort: str, mr: ModelReasoning) -> int:
    budget = mr.budgets.get(effort)
    if budget is None:
        known = ", ".join(["none", *mr.budgets])
        raise InvalidRequest(f"'reasoning_effort' must be one of {known}, not {effort!r}.", param="reasoning_effort")
    return budget


def apply_anthropic_thinking(out: dict[str, Any], body: Mapping[str, Any], mr: ModelReasoning) -> None:
    """Set `thinking` on a Messages request built from `body`: the client's own `thinking` as it is, else one
    from its reasoning effort (not when the conversation's last tool turn lacks its thinking block). While
    thinking, max_tokens is raised above the budget (the API wants
    max_tokens > budget_tokens; the client's cap stays free for the answer), sampling parameters the API
    refuses are dropped, and a forced tool choice becomes auto (the API refuses forcing a tool)."""
    thinking = body.get("thinking")
    if isinstance(thinking, Mapping):
        out["thinking"] = dict(thinking)
    else:
        effort = effort_of(body)
        if effort is None or effort == "none" or _unsigned_tool_turn(out.get("messages")):
            return
        if mr.style == "adaptive":
            out["thinking"] = {"type": "adaptive"}
            out["output_config"] = {**out.get("output_config", {}), "effort": _ADAPTIVE_EFFORT.get(effort, "high")}
        else:
            out["thinking"] = {"type": "enabled", "budget_tokens": max(ANTHROPIC_MIN_BUDGET, _budget(effort, mr))}
    kind = out["thinking"].get("type")
    if kind not in ("enabled", "adaptive"):
        return
    budget = out["thinking"].get("budget_tokens")
    if kind == "enabled" and isinstance(budget, int) and out["max_tokens"] <= budget:
        out["max_tokens"] = budget + out["max_tokens"]
    for name in _NOT_WHILE_THINKING:
        out.pop(name, None)
    choice = out.get("tool_choice")
    if isinstance(choice, Mapping) and choice.get("type") in ("any", "tool"):
        out["tool_choice"] = {"type": "auto", **{k: v for k, v in choice.items() if k == "disable_parallel_tool_use"}}


def _unsigned_tool_turn(turns: Any) -> bool:
    """The last assistant turn uses a tool without its thinking block first (a client that does not send
    thinking blocks back, such as the Responses API's reasoning items, which are dropped): with thinking on,
    the API refuses it, so such a request goes without thinking."""
    for turn in reversed(turns or ()):
        if turn.get("role") == "assistant":
            content: list[Any] = turn.get("content") or []
            uses_tool = any(isinstance(b, Mapping) and b.get("type") == "tool_use" for b in content)
            return uses_tool and content[0].get("type") not in ("thinking", "redacted_thinking")
    return False


def gemini_thinking_config(body: Mapping[str, Any], mr: ModelReasoning) -> dict[str, Any] | None:
    """generationConfig.thinkingConfig for the request's reasoning effort (None: none asked for)."""
    effort = effort_of(body)
    if effort is None:
        return None
    if mr.style == "level":
        if effort not in _LEVEL and effort != "none":
            _budget(effort, mr)  # refuses an unknown effort
        return {"thinkingLevel": _LEVEL.get(effort, "low"), "includeThoughts": True}
    if effort == "none":
        return {"thinkingBudget": 0}
    return {"thinkingBudget": _budget(effort, mr), "includeThoughts": True}


def openai_effort(thinking: Any, output_config: Any, mr: ModelReasoning) -> str | None:
    """The reasoning_effort for a /v1/messages `thinking` param, on a model of style `effort` (None: none)."""
    if mr.style != "effort" or not isinstance(thinking, Mapping):
        return None
    kind = thinking.get("type")
    if kind == "adaptive":
        effort = output_config.get("effort") if isinstance(output_config, Mapping) else None
        return {"max": "high", "low": "low", "medium": "medium", "high": "high"}.get(effort or "", "medium")
    budget = thinking.get("budget_tokens")
    if kind != "enabled" or not isinstance(budget, int):
        return None
    # the smallest effort whose budget covers the one asked for (the largest when none does)
    ranked = sorted((b, e) for e, b in mr.budgets.items() if e in ("low", "medium", "high"))
    return next((e for b, e in ranked if budget <= b), ranked[-1][1] if ranked else "high")


def thinking_blocks_of(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Anthropic thinking blocks an OpenAI assistant message carries back in `thinking_blocks`."""
    out: list[dict[str, Any]] = []
    for block in message.get("thinking_blocks") or ():
        if not isinstance(block, Mapping):
            continue
        if block.get("type") == "thinking" and isinstance(block.get("thinking"), str):
            b: dict[str, Any] = {"type": "thinking", "thinking": block["thinking"]}
            if isinstance(block.get("signature"), str):
                b["signature"] = block["signature"]
            out.append(b)
        elif block.get("type") == "redacted_thinking" and isinstance(block.get("data"), str):
            out.append({"type": "redacted_thinking", "data": block["data"]})
    return out


def from_anthropic_blocks(blocks: Any) -> tuple[str | None, list[dict[str, Any]]]:
    """(reasoning_content, thinking_blocks) of an Anthropic message's content."""
    texts: list[str] = []
    kept: list[dict[str, Any]] = []
    for block in blocks or ():
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "thinking":
            texts.append(block.get("thinking") or "")
            kept.append({"type": "thinking", "thinking": block.get("thinking") or "",
                         "signature": block.get("signature") or ""})
        elif kind == "redacted_thinking":
            kept.append({"type": "redacted_thinking", "data": block.get("data") or ""})
    return ("".join(texts) if texts else None), kept


def cache_control(part: Any) -> Any:
    """A part's (or message's, or tool's) cache_control, if it has one."""
    return part.get("cache_control") if isinstance(part, Mapping) else None
