"""The config's `reasoning:` section: how an OpenAI reasoning_effort becomes each provider's thinking setting.

    reasoning:
      budgets: {minimal: 1024, low: 2048, medium: 8192, high: 24576}   # effort -> thinking tokens
      models:                                   # by glob over the upstream model name, first match wins
        "claude-3-7-sonnet*": {budgets: {high: 16000}}
        "claude-opus-4-7*": {style: adaptive}   # budget | adaptive | level | effort

Entries given here come before the built-in ones (relay.types.DEFAULT_REASONING_MODELS), so they override them.
"""

from __future__ import annotations

from typing import cast

from .config_yaml import ConfigError, Node
from .types import DEFAULT_BUDGETS, DEFAULT_REASONING_MODELS, REASONING_STYLES, ReasoningStyle, ReasoningTable

__all__ = ["parse_reasoning"]


def _budgets(node: Node) -> dict[str, int]:
    return {effort: node.get_int(effort, 0, lo=0, hi=1_000_000) for effort in node.keys()}


def parse_reasoning(node: Node) -> ReasoningTable:
    node.allow("budgets", "models")
    budgets = {**DEFAULT_BUDGETS, **_budgets(node.child("budgets"))}
    models = node.child("models")
    entries = []
    for glob in models.keys():
        m = models.child(glob)
        m.allow("style", "budgets")
        style = m.get_str("style", "") or None
        if style is not None and style not in REASONING_STYLES:
            raise ConfigError(f"{m.path}.style: must be one of {', '.join(REASONING_STYLES)}, not {style!r}")
        entries.append((glob, cast("ReasoningStyle | None", style), _budgets(m.child("budgets"))))
    return ReasoningTable(budgets=budgets, models=(*entries, *DEFAULT_REASONING_MODELS))
