"""Build a config group from its ``_target_``, with every failure one :class:`ConfigError`.

``hydra.utils.instantiate`` reports a typo in the module path, an argument the class does
not take or a constructor that refuses a value as a multi-line ``InstantiationException``;
a value of the wrong type often surfaces only as a ``TypeError`` deep inside the
constructor, naming no key. :func:`instantiate_component` checks the target and the
arguments against the constructor's signature and type hints first, and turns whatever the
constructor still raises into one line naming the group's key.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Callable

from hydra._internal.utils import _locate
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fl.errors import ConfigError


def locate(key: str, target: object) -> Callable[..., Any]:
    """The class or function that ``<key>._target_`` names."""
    if not isinstance(target, str) or not target:
        raise ConfigError(f"{key}._target_", target, "must be the import path of a class or function, e.g. "
                          "my_lab.nets.ResNet9")
    try:
        obj = _locate(target)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's path
        cause = e.__cause__ or e
        raise ConfigError(f"{key}._target_", target, f"cannot be imported ({type(cause).__name__}: "
                          f"{str(cause).splitlines()[0] if str(cause) else ''})") from None
    if not callable(obj):
        raise ConfigError(f"{key}._target_", target, "must name a class or function")
    return obj


def instantiate_component(key: str, node: DictConfig | dict, *, skip: tuple[str, ...] = (), **runtime: Any) -> Any:
    """``instantiate(node, **runtime)``; raises ConfigError naming ``key.<argument>`` on bad input.

    ``skip``: node keys that are not constructor arguments (removed before the call).
    ``runtime``: arguments that come from the run, not the config (checked like the others).
    """
    params = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    assert isinstance(params, dict)
    for name in skip:
        params.pop(name, None)
    target = locate(key, params.get("_target_"))
    args = {k: v for k, v in params.items() if not k.startswith("_")}
    check_arguments(key, target, args, set(runtime), partial=bool(params.get("_partial_", False)))
    params.setdefault("_convert_", "all")  # lists and dicts arrive as plain Python objects
    try:
        return instantiate(params, **runtime)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(e).splitlines()[0]
        raise ConfigError(key, args, f"{params['_target_']} refused these arguments ({detail})") from None


def check_arguments(key: str, target: Callable[..., Any], args: dict[str, Any], runtime: set[str],
                    partial: bool = False) -> None:
    """Every ``args`` entry is a parameter of ``target`` of an accepted type; required ones are given."""
    func = target.__init__ if inspect.isclass(target) else target  # type: ignore[misc]
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return  # a builtin without a signature: nothing to check against
    params = sig.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    names = [n for n, p in params.items() if p.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                             inspect.Parameter.VAR_KEYWORD)]
    name = getattr(target, "__qualname__", str(target))
    for arg, value in args.items():
        if arg not in params and not takes_any:
            raise ConfigError(f"{key}.{arg}", value, f"{name} takes no such argument (it takes "
                              f"{', '.join(names) or 'none'})")
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # noqa: BLE001 - unresolvable annotations: skip the type check
        hints = {}
    for arg, value in args.items():
        hint = hints.get(arg)
        if hint is not None and not _accepts(hint, value):
            raise ConfigError(f"{key}.{arg}", value, f"must be {_describe(hint)} ({name})")
    if partial:
        return  # the first positional arguments (e.g. the optimizer's params) come later
    for n, p in params.items():
        if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) \
                and n not in args and n not in runtime:
            raise ConfigError(f"{key}.{n}", "???", f"{name} requires it: add +{key}.{n}=VALUE")


_SCALARS = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}


def _accepts(hint: Any, value: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(h, value) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint in _SCALARS or origin is not None or not isinstance(hint, type):
        return True
    # A class the config cannot express (e.g. a Tensor): only a scalar-looking mismatch is refused.
    return not isinstance(value, str) or issubclass(hint, str)


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        parts = [_describe(h) for h in typing.get_args(hint) if h in _SCALARS or h is type(None)]
        return " or ".join(dict.fromkeys(p for p in parts)) or str(hint)
    if hint is type(None):
        return "null"
    return _SCALARS.get(hint, getattr(hint, "__name__", str(hint)))
