"""Reading config.yaml: `${VAR}` and `${VAR:-default}` replaced from the environment in every string value,
and `Node`, a YAML value with its path whose typed getters raise ConfigError naming that path
(`channels[1].base_url: ...`), so the CLI can print one clear line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ConfigError", "Node", "expand", "read_yaml"]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A config problem; str(err) is one line that names the YAML path."""


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None
    # `${VAR}` may stand where YAML gives `{` a meaning (`keys: [${KEY}]`): hide each one behind a plain
    # token while parsing, then put it back in the string it landed in.
    found: list[str] = []

    def hide(m: re.Match[str]) -> str:
        found.append(m.group(0))
        return f"__relay_var_{len(found) - 1}__"

    try:
        return _restore(yaml.safe_load(_VAR.sub(hide, text)), found)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}") from None


def expand(value: Any, env: Mapping[str, str]) -> Any:
    """`value` with every ${VAR} / ${VAR:-default} in its strings replaced from `env`."""
    return _expand(value, env, "")


_HIDDEN = re.compile(r"__relay_var_(\d+)__")


def _restore(value: Any, found: list[str]) -> Any:
    if isinstance(value, str):
        return _HIDDEN.sub(lambda m: found[int(m.group(1))], value)
    if isinstance(value, list):
        return [_restore(v, found) for v in value]
    if isinstance(value, dict):
        return {k: _restore(v, found) for k, v in value.items()}
    return value


def _expand(value: Any, env: Mapping[str, str], path: str) -> Any:
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            got = env.get(m.group(1))
            if got is None or (got == "" and m.group(2) is not None):
                return m.group(2) or ""
            return got

        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [_expand(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _expand(v, env, f"{path}.{k}") for k, v in value.items()}
    return value


class Node:
    """A YAML value and its path, with typed getters that raise ConfigError naming the path."""

    __slots__ = ("path", "value")

    def __init__(self, value: Any, path: str) -> None:
        self.value = value
        self.path = path

    def _sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def mapping(self) -> dict[str, Any]:
        if self.value is None:
            self.value = {}
        if not isinstance(self.value, dict):
            raise ConfigError(f"{self.path or 'config'}: must be a mapping")
        return self.value

    def allow(self, *names: str) -> None:
        for k in self.mapping():
            if k not in names:
                raise ConfigError(f"{self._sub(str(k))}: unknown field")

    def keys(self) -> list[str]:
        return [str(k) for k in self.mapping()]

    def child(self, key: str, default: Any = None) -> Node:
        return Node(self.mapping().get(key, default), self._sub(key))

    def items(self) -> list[Node]:
        if self.value is None:
            return []
        if not isinstance(self.value, list):
            raise ConfigError(f"{self.path}: must be a list")
        return [Node(v, f"{self.path}[{i}]") for i, v in enumerate(self.value)]

    def get_scalar_str(self) -> str:
        if isinstance(self.value, bool) or not isinstance(self.value, (str, int, float)):
            raise ConfigError(f"{self.path}: must be a string")
        return str(self.value)

    def get_str(self, key: str, default: str | None = None) -> str:
        v = self.mapping().get(key)
        if v is None:
            if default is None:
                raise ConfigError(f"{self._sub(key)}: required")
            return default
        return self.child(key).get_scalar_str()

    def get_str_list(self, key: str, default: list[str] | None = None) -> list[str]:
        v = self.mapping().get(key)
        if v is None:
            if default is None:
                raise ConfigError(f"{self._sub(key)}: required")
            return default
        if isinstance(v, str):
            v = [s.strip() for s in v.split(",")]
        if not isinstance(v, list):
            raise ConfigError(f"{self._sub(key)}: must be a list of strings")
        return [Node(x, f"{self._sub(key)}[{i}]").get_scalar_str() for i, x in enumerate(v)]

    def _number(self, key: str, kind: type, default: Any, lo: float | None, hi: float | None) -> Any:
        v = self.mapping().get(key)
        if v is None or v == "":
            return default
        try:
            if isinstance(v, bool):
                raise ValueError
            n = kind(v) if kind is float else int(str(v))
        except (TypeError, ValueError):
            raise ConfigError(f"{self._sub(key)}: must be a{'n integer' if kind is int else ' number'}, not {v!r}") from None
        if (lo is not None and n < lo) or (hi is not None and n > hi):
            bounds = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
            raise ConfigError(f"{self._sub(key)}: must be {bounds}, not {v!r}")
        return n

    def get_int(self, key: str, default: int, lo: int | None = None, hi: int | None = None) -> int:
        return int(self._number(key, int, default, lo, hi))

    def get_opt_int(self, key: str) -> int | None:
        v = self._number(key, int, None, 1, None)
        return None if v is None else int(v)

    def get_opt_float(self, key: str, lo: float = 0.0) -> float | None:
        """A number, or None when the key is absent or empty."""
        v = self._number(key, float, None, lo, None)
        return None if v is None else float(v)

    def get_float(self, key: str, default: float, lo: float | None = 0.001, hi: float | None = None) -> float:
        return float(self._number(key, float, default, lo, hi))

    def get_bool(self, key: str, default: bool) -> bool:
        v = self.mapping().get(key)
        if v is None or v == "":
            return default
        if isinstance(v, bool):
            return v
        s = str(v).strip().lower()
        if s in ("true", "yes", "1", "on"):
            return True
        if s in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{self._sub(key)}: must be true or false, not {v!r}")
