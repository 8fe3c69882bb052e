"""Check a composed config against the project's own config: no unknown, removed or missing
keys, and no value of the wrong kind.

Hydra refuses ``fl.round=3`` (a typo) but accepts ``+fl.round=3``, which would then be
silently ignored; a quoted ``'false'`` or ``'10'`` would reach the code as a string. This
module compares the user's config with the *reference*: the same config groups, composed
without the user's value overrides. Nodes built from a ``_target_`` (strategy, optim) may
take other keys; their constructor arguments are checked by :mod:`fl.config.components`.
"""

from __future__ import annotations

import difflib
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fl.errors import ConfigError


def check(cfg: DictConfig, reference: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first key of ``cfg`` that ``reference`` does not allow."""
    _walk(cfg, reference, "", reference)


def leaf_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Every dotted key below ``node`` (groups and leaves)."""
    out = []
    for key in node.keys():
        full = f"{prefix}{key}"
        out.append(full)
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            out += leaf_keys(child, full + ".")
    return out


def suggestion(key: str, reference: DictConfig) -> str:
    """``"; did you mean fl.rounds?"`` for the closest key of ``reference``, or ``""``."""
    close = difflib.get_close_matches(key, leaf_keys(reference), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _value(node: DictConfig, key: str, full: str) -> Any:
    try:
        value = node[key]
    except OmegaConfBaseException as e:
        raw = node._get_node(key)._value() if node._get_node(key) is not None else None  # type: ignore[union-attr]
        raise ConfigError(full, raw, f"cannot be resolved: {str(e).splitlines()[0]}") from None
    return value


def _walk(node: DictConfig, ref: DictConfig, prefix: str, root: DictConfig) -> None:
    built = "_target_" in set(ref.keys())  # a component's arguments are checked when it is built (`in ref`
    # is False for `_target_: ???`, the data=custom default)
    ref_keys, node_keys = set(ref.keys()), set(node.keys())  # `in` would skip keys whose value is ???
    for key in node.keys():
        full = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            raise ConfigError(full, "???", f"must be set, it has no default: add {full}=VALUE")
        value = _value(node, key, full)
        if key not in ref_keys:
            if built:
                continue
            raise ConfigError(full, value, "no such key" + suggestion(full, root))
        if OmegaConf.is_missing(ref, key):
            continue  # a mandatory value without a default: any value the user gives
        expected = ref[key]
        if isinstance(expected, DictConfig):
            if not isinstance(value, DictConfig):
                raise ConfigError(full, value, f"must be a group of keys ({', '.join(map(str, expected.keys()))})")
            _walk(value, expected, full + ".", root)
        else:
            _check_type(full, value, expected)
    if not built:
        for key in ref.keys():
            if key not in node_keys:
                raise ConfigError(f"{prefix}{key}", None, "cannot be removed: the job needs it")


def _check_type(key: str, value: Any, expected: Any) -> None:
    if expected is None or value is None and not isinstance(expected, bool):
        return  # null defaults take any value; validators check the rest
    if isinstance(expected, bool):
        if not isinstance(value, bool):
            raise ConfigError(key, value, "must be true or false (unquoted)")
    elif isinstance(expected, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, value, "must be a number (unquoted)")
    elif isinstance(expected, ListConfig) and not isinstance(value, ListConfig):
        raise ConfigError(key, value, f"must be a list, e.g. {key}=[{', '.join(map(str, expected))}]")
