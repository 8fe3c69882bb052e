"""Check every job of a command line before the first one starts.

``python train.py [-m] overrides...`` composes each job's config the way Hydra will (every
point of a ``-m`` sweep), then checks it: Hydra's own composition errors (a typo in a key,
an unknown group option, a bad override), the config schema (:mod:`fl.config.schema`), the values
and the component combinations (:func:`fl.config.build.prepare`). Every mistake becomes one
:class:`ConfigError` naming the key, the value and what is allowed; for a sweep, all bad
points are reported at once and none is run. Nothing is written and no process group is
made: the run directory does not even exist yet.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from pathlib import Path
from typing import Iterator

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from fl.errors import ConfigError
from fl.runtime.env import DistEnv
from fl.config.schema import check as check_schema
from fl.config.schema import suggestion

_HYDRA_FLAGS_CHECKED = {"-m", "--multirun", "-r", "--run"}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Warnings about settings are printed by the job itself; here only errors count."""
    logger = logging.getLogger("fl")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def jobs(argv: list[str]) -> list[list[str]] | None:
    """The override list of every job ``argv`` runs, or ``None`` when Hydra should answer alone
    (``--help``, ``--cfg``, another config path, a sweeper plugin)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    flags = [a for a in argv if a.startswith("-")]
    if any(f not in _HYDRA_FLAGS_CHECKED for f in flags):
        return None
    overrides = [a for a in argv if not a.startswith("-")]
    if any(o.split("=", 1)[0].lstrip("+~") == "hydra/sweeper" for o in overrides):
        return None
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except OverrideParseException as e:
        raise _parse_error(parser, overrides, e) from None
    if not ("-m" in flags or "--multirun" in flags):
        return [overrides]
    return [point for batch in BasicSweeper.split_arguments(parsed, None) for point in batch]


def _parse_error(parser: object, overrides: list[str], e: Exception) -> ConfigError:
    for text in overrides:
        try:
            parser.parse_overrides([text])  # type: ignore[attr-defined]
        except OverrideParseException as one:
            key, _, value = text.partition("=")
            detail = str(one).splitlines()[0] if "Error parsing override" not in str(one) else \
                str(one).splitlines()[1]
            return ConfigError(key, value, f"is not valid override syntax ({detail}); write key=value, and quote "
                               "values with special characters, e.g. \"data.root='/data/site_{client}'\"")
    return ConfigError("overrides", " ".join(overrides), str(e).splitlines()[0])


def check(argv: list[str], env: DistEnv, config_dir: str) -> list[tuple[str, ConfigError | None]]:
    """One error line (and its exception, for a traceback on request) per bad job of ``argv``;
    empty when every job may start."""
    try:
        points = jobs(argv)
    except ConfigError as e:
        return [(str(e), e)]
    if points is None:
        return []
    errors: list[tuple[str, ConfigError | None]] = []
    for i, overrides in enumerate(points):
        try:
            check_job(overrides, env, config_dir)
        except ConfigError as e:
            errors.append((str(e) if len(points) == 1 else f"sweep point {i} ({' '.join(overrides)}): {e}", e))
    if len(errors) > 1 or errors and len(points) > 1:
        errors.append((f"{len(errors)} of {len(points)} sweep points are invalid; none was run", None))
    return errors


def check_job(overrides: list[str], env: DistEnv, config_dir: str) -> DictConfig:
    """Compose one job's config and check it for this rank; raises :class:`ConfigError`."""
    from fl.config.build import prepare

    cfg = _compose(overrides, config_dir)
    reference = _reference(tuple(_group_choices(overrides, config_dir)), config_dir)
    check_schema(cfg, reference)
    with _quiet():
        try:
            prepare(cfg.copy(), env.world_size, env.rank, env.local_rank)
        except OmegaConfBaseException as e:  # e.g. a value that only fails when read
            key = getattr(e, "full_key", None) or "config"
            raise ConfigError(str(key), getattr(e, "value", None), str(e).splitlines()[0]) from None
    return cfg


def _compose(overrides: list[str], config_dir: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
        try:
            return compose(config_name="config", overrides=overrides)
        except (HydraException, OmegaConfBaseException) as e:
            error = e
        try:
            reference = compose(config_name="config", overrides=_group_choices(overrides, config_dir))
        except (HydraException, OmegaConfBaseException) as e:
            error, reference = e, compose(config_name="config")
    raise translate(error, overrides, reference) from None


@functools.lru_cache(maxsize=32)
def _reference(choices: tuple[str, ...], config_dir: str) -> DictConfig:
    """The config of these group choices without value overrides (read only; interpolations are
    resolved when read, so a cached one stays right when environment variables change)."""
    return _compose(list(choices), config_dir)


def _group_choices(overrides: list[str], config_dir: str) -> list[str]:
    """The overrides that choose config group options (``data=mnist``, ``hydra/launcher=...``)."""
    groups = {p.name for p in Path(config_dir).iterdir() if p.is_dir()}
    return [o for o in overrides if (k := o.split("=", 1)[0].lstrip("+~")) in groups or "/" in k]


def _value_of(key: str, overrides: list[str], prefix: str = "") -> object:
    """The value the last override of ``key`` (starting with ``prefix``) sets, as Hydra parses it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for o in reversed(overrides):
        if not o.startswith(prefix):
            continue
        k, _, v = o.partition("=")
        if k.lstrip("+~") == key:
            try:
                return OverridesParser.create().parse_override(o).value()
            except Exception:  # noqa: BLE001 - unparsable: show it as written
                return v
    return None


def translate(e: Exception, overrides: list[str], reference: DictConfig) -> ConfigError:
    """Hydra's multi-line composition error as one ConfigError (never advising ``+key=`` for a typo)."""
    msg = str(e)
    if m := re.search(r"Could not override '([^']+)'", msg):
        key = m[1]
        cause = str(e.__cause__ or "")
        if "not in struct" in cause or "Key '" in cause:
            return ConfigError(key, _value_of(key, overrides), "no such key" + suggestion(key, reference))
        return ConfigError(key, _value_of(key, overrides), (cause or msg).splitlines()[0])
    if m := re.search(r"Could not find '([^']+)/([^'/]+)'", msg):
        group, option = m[1], m[2]
        options = re.findall(r"^\t(\S+)$", msg.split("Available options", 1)[-1].split("Config search path")[0],
                             re.MULTILINE)
        allowed = f"must be one of {', '.join(options)}" if options else f"is not an option of the {group} group"
        return ConfigError(group, option, allowed)
    if m := re.search(r"An item is already at '([^']+)'", msg):
        return ConfigError(m[1], _value_of(m[1], overrides, "+"), f"already exists: set it without '+', as {m[1]}=VALUE")
    if m := re.search(r"Could not delete from config\. '?([^' ]+)'? does not exist", msg):
        return ConfigError(m[1], None, "no such key to delete" + suggestion(m[1], reference))
    if m := re.search(r"Ambiguous value for argument '([^=']+)=([^']*)'", msg):
        return ConfigError(m[1], m[2], "is a list of values: add -m (--multirun) to run one job per value, or "
                           f"quote it as one value: {m[1]}='{m[2]}'")
    return ConfigError("overrides", " ".join(overrides), msg.splitlines()[0] if msg else type(e).__name__)
