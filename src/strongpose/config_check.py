"""Config mistakes explained before anything is built: a value of the wrong type names its key and the
type expected; an override of a key that does not exist lists the keys that do.

Hydra already lists the options of a group (``backbone=resnet51``), but for ``model.lr=abc`` the string
would reach the optimiser after the data are loaded, and for ``model.lr_typo=1`` it only says the key
"is not in struct". Types come from the annotations of each ``_target_``'s signature, so there is no
second schema to keep in line with the code (typeguard or pydantic could check them too, but neither is
a dependency, and only scalars are checked here).
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import os
import pathlib
import sys
import traceback
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import GrammarParseError, InterpolationResolutionError, MissingMandatoryValue

# the packaged configs of every entry point (``strongpose/conf``)
CONFIG_DIR = pathlib.Path(__file__).parent / "conf"

SCALARS = (bool, int, float, str, type(None), pathlib.Path, pathlib.PurePath)


class InputError(Exception):
    """Raised for a mistake in what a run was given (config, data, checkpoint), with a message that names it:
    the entry points print it in a line, without a traceback (:func:`report_input_errors`)."""


class ConfigError(InputError, ValueError):
    """A config value that cannot be right (a wrong type for its key, values that do not go together)."""


def require_positive(prefix: str, **values: float | None) -> None:
    """Raise :class:`ConfigError` naming every ``prefix.key=value`` that is not > 0 (None: unset, allowed):
    sizes and rates that would otherwise fail deep inside a library, or as another number (a scaled LR)."""
    _require(prefix, values, lambda value: value > 0, "> 0")


def require_non_negative(prefix: str, **values: float | None) -> None:
    """Raise :class:`ConfigError` naming every ``prefix.key=value`` below 0 (counts such as worker processes)."""
    _require(prefix, values, lambda value: value >= 0, ">= 0")


def _require(prefix: str, values: Mapping[str, float | None], ok: Callable[[float], bool], bound: str) -> None:
    bad = [f"{prefix}{'.' if prefix else ''}{key}={value!r}" for key, value in values.items()
           if value is not None and not ok(value)]
    if bad:
        raise ConfigError(f"{', '.join(bad)}: must be {bound}")


class InputErrorExit(SystemExit):
    """A run stopped by an :class:`InputError` (or a missing file, an unresolvable ``${...}``), already
    reported on stderr; exit code 2."""


# what the entry points report in a line: StrongPose's own, a file that is not there (every such error names its
# path), a mandatory value not given (ckpt_path=???), and an interpolation that cannot be resolved or parsed
# (e.g. ${oc.env:COCO_ROOT} without the variable)
INPUT_ERRORS = (InputError, FileNotFoundError, MissingMandatoryValue, InterpolationResolutionError,
                GrammarParseError)


@contextlib.contextmanager
def report_input_errors() -> Iterator[None]:
    """Around an entry point's work (inside its ``@hydra.main`` function, whose own file names the Hydra job):
    an error of :data:`INPUT_ERRORS` is printed as ``Type: message`` and where it was raised on stderr, and the
    process exits with 2, instead of a traceback through Hydra, Lightning and torch that buries the message;
    ``HYDRA_FULL_ERROR=1`` keeps the traceback. In a multirun (``-m``) the error goes on to Hydra as it is:
    an exit would end the sweep at its first failing job (Hydra and submitit only catch ``Exception``)."""
    try:
        yield
    except Exception as raised:
        err = _input_error(raised)
        if err is None or os.environ.get("HYDRA_FULL_ERROR") == "1" or in_multirun():
            raise
        frames = traceback.extract_tb(err.__traceback__)
        # the innermost line of StrongPose's own code (a library's line says less) outside these checks (the line
        # that called require_positive, not the helper's raise), else the innermost
        ours = [f for f in frames if f"{os.sep}strongpose{os.sep}" in f.filename]
        frame = next((f for f in reversed(ours) if f.filename != __file__), ours[-1] if ours else frames[-1])
        print(f"{type(err).__name__}: {err}", f"(raised at {frame.filename}:{frame.lineno}; HYDRA_FULL_ERROR=1 "
              "shows the traceback)", sep="\n", file=sys.stderr, flush=True)
        raise InputErrorExit(2) from err  # a SystemExit passes through Hydra's error handling


def _input_error(err: BaseException) -> BaseException | None:
    """``err`` when it is one of :data:`INPUT_ERRORS`, or the one that made ``instantiate`` fail (Hydra wraps
    a constructor's error, e.g. a module's ConfigError, in an InstantiationException); else None."""
    from hydra.errors import InstantiationException

    if isinstance(err, INPUT_ERRORS):
        return err
    if isinstance(err, InstantiationException) and isinstance(err.__cause__, INPUT_ERRORS):
        return err.__cause__
    return None


def in_multirun() -> bool:
    """Inside a Hydra multirun job (``-m``, ``hydra.mode=MULTIRUN``; also each job submitit starts)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _members(annotation: Any) -> list[Any] | None:
    """The alternatives of ``annotation`` (``X | Y``, ``Optional[X]``), or None when one of them cannot be
    checked on a plain config value (a class such as ``Accelerator``, ``Callable``, ``Tensor``, ...)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [_members(arg) for arg in typing.get_args(annotation)]
        return None if any(m is None for m in members) else [x for m in members for x in m]
    if origin is typing.Literal or annotation in SCALARS:
        return [annotation]
    if origin in (list, tuple, Sequence) or annotation in (list, tuple):
        return [list]
    if origin in (dict, Mapping) or annotation in (dict, Mapping):  # typing.Mapping[...]'s origin is Mapping
        return [dict]
    return None


def _fits(value: Any, member: Any) -> bool:
    if typing.get_origin(member) is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in typing.get_args(member))
    if member is bool:
        return isinstance(value, bool)
    if member is int:  # a bool is an int to Python, not to a config
        return isinstance(value, int) and not isinstance(value, bool)
    if member is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if member in (pathlib.Path, pathlib.PurePath):
        return isinstance(value, (str, pathlib.PurePath))
    return isinstance(value, member)


def _describe(members: list[Any]) -> str:
    names = []
    for m in members:
        if typing.get_origin(m) is typing.Literal:
            names.append("one of " + ", ".join(repr(a) for a in typing.get_args(m)))
        else:
            names.append("null" if m is type(None) else getattr(m, "__name__", str(m)))
    return " or ".join(dict.fromkeys(names))


def _signature_types(target: str) -> dict[str, Any]:
    from hydra.utils import get_object

    try:
        obj = get_object(target)
    except Exception:  # noqa: BLE001 - an unimportable target is reported by instantiate itself
        return {}
    if not inspect.isclass(obj):
        return _hints(obj)
    hints: dict[str, Any] = {}
    for cls in reversed(obj.__mro__):  # a subclass whose __init__ passes **kwargs on keeps its bases' types
        if "__init__" in vars(cls):
            hints.update(_hints(cls.__init__))
    return hints


def _hints(function: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(function)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: that signature is not checked
        return {}


def type_errors(node: DictConfig, path: str = "") -> list[str]:
    """One line per value under ``node`` whose type its ``_target_``'s signature does not accept.
    An interpolated node (``model.backbone: ${backbone}``) is checked where it is defined, once."""
    errors: list[str] = []
    target = node.get("_target_") if "_target_" in node and not OmegaConf.is_interpolation(node, "_target_") else None
    hints = _signature_types(target) if isinstance(target, str) else {}
    for key in node:
        key = str(key)
        where = f"{path}.{key}" if path else key
        try:
            value = node[key]
        except Exception:  # noqa: BLE001 - ??? or a resolver only a running Hydra app has
            continue
        if isinstance(value, DictConfig):
            if not OmegaConf.is_interpolation(node, key):
                errors += type_errors(value, where)
            if "_target_" in value:  # becomes an object before the call
                continue
        if key.startswith("_") or key not in hints:
            continue
        # name where an interpolated value came from
        source = (f" from {OmegaConf.to_container(node, resolve=False)[key]}"
                  if OmegaConf.is_interpolation(node, key) else "")
        if error := _type_error(where, value, hints[key], source):
            errors.append(f"{error} (argument {key!r} of {target})")
    return errors


def _type_error(where: str, value: Any, annotation: Any, source: str = "") -> str | None:
    """``where=value (type): expected ...`` when ``value`` is not of type ``annotation``; None when it is (or
    the annotation cannot be checked on a config value)."""
    plain = OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
    members = _members(annotation)
    if members is None or any(_fits(plain, m) for m in members):
        return None
    return f"{where}={plain!r} ({type(plain).__name__}{source}): expected {_describe(members)}"


def schema_errors(cfg: DictConfig, schema: Mapping[str, Any]) -> list[str]:
    """One line per dotted key of ``schema`` whose value in ``cfg`` is not of its type (the options of a command
    with no ``_target_`` to read them from: evaluate, predict, export, check_data). Mandatory ``???`` values and
    absent keys are left to the command."""
    errors: list[str] = []
    for key, annotation in schema.items():
        try:
            value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
        except Exception:  # noqa: BLE001 - ??? (Hydra names it) or a resolver only a running app has
            continue
        if value is not _ABSENT and (error := _type_error(key, value, annotation)):
            errors.append(error)
    return errors


_ABSENT = object()


def check_types(cfg: DictConfig, schema: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`ConfigError` listing every value of the wrong type in ``cfg``: against its ``_target_``
    signatures, or with ``schema`` ({dotted key: type}) against that alone."""
    errors = schema_errors(cfg, schema) if schema is not None else type_errors(cfg)
    if errors:
        raise ConfigError("wrong type in the config:\n  " + "\n  ".join(errors))


def unknown_key_hint(args: Sequence[str], config_dir: str | pathlib.Path = CONFIG_DIR,
                     config_name: str = "train") -> str | None:
    """For command-line overrides ``a.b=c`` whose key does not exist, the keys that do (and the closest),
    e.g. ``model.lr_typo=1`` -> "model has no key 'lr_typo' (did you mean 'lr'?); its keys: ..."."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    config_dir = pathlib.Path(config_dir)
    lines, user_dirs = _overrides_and_config_dirs(args)
    dirs = [config_dir, *user_dirs]
    try:
        overrides = OverridesParser.create().parse_overrides(lines)
        # the group choices (backbone=..., experiment=..., also of the user's --config-dir) decide which keys exist
        groups = [o.input_line for o in overrides if any((d / o.key_or_group).is_dir() for d in dirs)]
        search = [f"hydra.searchpath=[{','.join(f'file://{d.resolve()}' for d in user_dirs)}]"] if user_dirs else []
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = OmegaConf.to_container(compose(config_name, overrides=[*groups, *search]), resolve=False)
    except Exception:  # noqa: BLE001 - Hydra has reported the problem already; no hint then
        return None
    hints = []
    for o in overrides:
        key = o.key_or_group
        if (o.is_add() or o.is_force_add() or o.is_delete() or o.package is not None or key.startswith("hydra")
                or any((d / key).is_dir() for d in dirs)):
            continue
        node: Any = cfg
        parts = key.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, dict):
                break
            if part in node:
                node = node[part]
                continue
            parent = ".".join(parts[:depth]) or "the config"
            keys = sorted(str(k) for k in node if not str(k).startswith("_"))  # not _target_ & co
            close = difflib.get_close_matches(part, keys, n=1, cutoff=0.4)
            hints.append(f"{parent} has no key {part!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                         + f"; its keys: {', '.join(keys)}")
            break
    return "\n".join(hints) or None


# Hydra's command-line flags that take a value (``--config-dir DIR`` or ``--config-dir=DIR``); ``--info``
# takes one optionally, so ``--info=...`` only
_DIR_FLAGS = {"--config-dir", "-cd"}
_VALUE_FLAGS = _DIR_FLAGS | {"--config-path", "-cp", "--config-name", "-cn", "--cfg", "-c", "--package", "-p",
                             "--experimental-rerun"}


def _overrides_and_config_dirs(args: Sequence[str]) -> tuple[list[str], list[pathlib.Path]]:
    """The overrides of a command line (its flags and their values left out) and the ``--config-dir`` folders."""
    overrides: list[str] = []
    dirs: list[pathlib.Path] = []
    rest = iter(args)
    for arg in rest:
        if not arg.startswith("-"):
            overrides.append(arg)
            continue
        flag, has_value, value = arg.partition("=")
        if flag in _VALUE_FLAGS and not has_value:
            value = next(rest, "")
        if flag in _DIR_FLAGS and value:
            dirs.append(pathlib.Path(value))
    return overrides, dirs


# config options that need a Hydra plugin of an optional extra: (the override's start, its plugin module, the extra)
PLUGIN_OPTIONS = (("hparams_search=optuna", "hydra_plugins.hydra_optuna_sweeper", "sweeps"),
                  ("hydra/sweeper=optuna", "hydra_plugins.hydra_optuna_sweeper", "sweeps"),
                  ("hydra/launcher=slurm", "hydra_plugins.hydra_submitit_launcher", "slurm"))


def missing_plugin_hint(args: Sequence[str]) -> str | None:
    """For an option whose Hydra plugin is not installed (Hydra says only that the option does not exist),
    what to install."""
    import importlib.util

    for option, module, extra in PLUGIN_OPTIONS:
        if any(arg.lstrip("+~") == option for arg in args) and importlib.util.find_spec(module) is None:
            return (f"{option} needs a Hydra plugin that is not installed ({module.split('.')[-1]}): "
                    f"pip install 'strongpose[{extra}]'")
    return None


def print_key_hint(config_name: str) -> None:
    """After Hydra refused the command line (``sys.argv``): the :func:`unknown_key_hint` or
    :func:`missing_plugin_hint`, if any, on stderr."""
    hint = missing_plugin_hint(sys.argv[1:]) or unknown_key_hint(sys.argv[1:], CONFIG_DIR, config_name)
    if hint:
        print(hint, file=sys.stderr)


def run_with_key_hints(main: Callable[[], Any], config_name: str) -> None:
    """Run an entry point's ``@hydra.main`` function; when Hydra refuses an override because its key does
    not exist ("Key 'lr_typo' is not in struct"), also print the keys that do (and the closest one). A command
    line Hydra refuses (a key or group option that does not exist, a syntax error) is an input mistake like
    the others: exit status 2 (Hydra's is 1, which stays that of a run or a sweep's job that failed)."""
    from hydra.errors import ConfigCompositionException, OverrideParseException

    try:
        main()
    except InputErrorExit:
        raise  # the run started: its keys exist
    except SystemExit as exit:
        # a run that started had only existing keys: no hint then; nor after a signal (128 + its number)
        if exit.code not in (0, None) and not (isinstance(exit.code, int) and exit.code >= 128):
            print_key_hint(config_name)
            # Hydra reports the error it caught and exits 1 from its handler: the error is the exit's context
            if isinstance(exit.__context__, (ConfigCompositionException, OverrideParseException)):
                raise SystemExit(2) from None
        raise
