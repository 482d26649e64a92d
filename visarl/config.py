"""Typed configs: dataclass schemas merged with YAML and command-line overrides through OmegaConf.

Every stage's config is a dataclass deriving from :class:`RunConfig`. YAML files only override
defaults. Validation happens in two passes so that errors name what is wrong:

1. :func:`check_keys` walks the raw YAML/override tree against the schema: unknown keys are
   reported with the nearest valid key, and values are checked against the field's type; every such problem of
   the file and the overrides is reported in one ConfigError.
2. ``OmegaConf.to_object`` builds the dataclass, which runs each ``__post_init__`` for
   value checks (choices, ranges).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import re
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file, key or value is wrong; the message says which and why."""

    @property
    def problems(self) -> list[str]:
        """The separate problems this error reports (one, or each of a :func:`combined` error's)."""
        return list(getattr(self, "_problems", [str(self)]))


def combined(errors: list[ConfigError]) -> ConfigError:
    """One ConfigError reporting every problem of ``errors`` (itself when there is one), so a config with several
    mistakes is fixed in one round, not one run per mistake."""
    problems = [p for e in errors for p in e.problems]
    if len(problems) == 1:
        return errors[0]
    error = ConfigError(f"{len(problems)} config errors:\n  " + "\n  ".join(problems))
    error._problems = problems
    return error


def choice(name: str, value: Any, options: typing.Iterable[Any]) -> None:
    """Raise a :class:`ConfigError` unless ``value`` is one of ``options``."""
    options = list(options)
    if value not in options:
        raise ConfigError(f"{name}: {value!r} is not one of {options}")


@dataclass
class TrainerConfig:
    """Settings handed to ``lightning.Trainer``; the same config runs on a laptop CPU or several GPUs."""

    accelerator: str = "auto"
    """'cpu', 'gpu', 'auto', ..."""
    devices: Any = 1
    """Number of devices, a list of device ids, or 'auto'."""
    strategy: str = "auto"
    """'auto', 'ddp', 'ddp_spawn', ..."""
    num_nodes: int = 1
    """Number of machines for multi-node DDP."""
    precision: str = "32"
    """'32', 'bf16-mixed' or '16-mixed'."""
    max_epochs: int | None = None
    """Epoch budget for epoch-based stages; None lets the stage decide."""
    max_steps: int = -1
    """Optimizer-step budget; -1 means no limit."""
    log_every_n_steps: int = 50
    """How often Lightning logs scalars."""
    enable_progress_bar: bool = True
    """Show Lightning's progress bar."""

    def __post_init__(self) -> None:
        choice("trainer.precision", str(self.precision), ["32", "32-true", "bf16-mixed", "16-mixed", "bf16-true"])
        self.precision = str(self.precision)


@dataclass
class RunConfig:
    """Fields shared by every stage: which runner, where the run lives, how it is seeded."""

    stage: str = ""
    """The runner to use, e.g. 'collect'; see ``python -m visarl.fit --list-stages``."""
    name: str = ""
    """Run group name; defaults to the config file's stem. Runs go to <output_dir>/<name>/<run>."""
    run: str = ""
    """Run directory name inside the group; defaults to a timestamp."""
    output_dir: str = "runs"
    """Root directory of all runs."""
    seed: int = 0
    """Seeds python, numpy, torch and the environments."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Lightning Trainer settings."""

    def trainer_fields(self) -> frozenset[str] | None:
        """The ``trainer.*`` fields this stage reads: None for all (it builds a Lightning Trainer). Setting any
        other is a config error (:func:`check_trainer_use`), so ``trainer.devices=4`` never silently does nothing."""
        return None


def check_trainer_use(cfg: RunConfig) -> None:
    """Refuse ``trainer.*`` values, other than the defaults, that ``cfg``'s stage does not read."""
    used = cfg.trainer_fields()
    if used is None:
        return
    default = TrainerConfig()
    for f in dataclasses.fields(TrainerConfig):
        if f.name not in used and getattr(cfg.trainer, f.name) != getattr(default, f.name):
            reads = f"it reads only {', '.join('trainer.' + k for k in sorted(used))}" if used else "it reads none"
            raise ConfigError(
                f"trainer.{f.name}: stage {cfg.stage!r} does not use it ({reads}); remove it from the config"
            )


# --------------------------------------------------------------------------------------------------
# validation


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _check_value(path: str, value: Any, tp: Any) -> None:
    """Check a raw (YAML-parsed) value against a type hint; raise ConfigError naming the key."""
    if tp is Any or value == "???":
        return
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                _check_value(path, value, arg)
                return
            except ConfigError as e:
                errors.append(e)
        real = [a for a in args if a is not type(None)]
        if len(real) == 1 and (dataclasses.is_dataclass(real[0]) or typing.get_origin(real[0]) in (list, tuple, dict)):
            raise errors[0]  # `Section | None`, `list[X] | None`: the inner message names the nested key or item
        reasons = f" ({'; '.join(str(e) for e in errors)})" if len(errors) > 1 else ""
        raise ConfigError(f"{path}: {value!r} is not a valid {_type_name(tp)}{reasons}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of {tp.__name__} fields, got {value!r}")
        check_keys(value, tp, path + ".")
        return
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: {value!r} is not a valid {_type_name(tp)} (expected a list)")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        for i, item in enumerate(value):
            _check_value(f"{path}[{i}]", item, item_tp)
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {value!r} is not a valid {_type_name(tp)} (expected a mapping)")
        return
    if value is None:
        raise ConfigError(f"{path}: None is not a valid {_type_name(tp)}")
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool),
    }.get(tp)
    if ok is not None and not ok(value):
        raise ConfigError(f"{path}: {value!r} ({type(value).__name__}) is not a valid {_type_name(tp)}")


def check_keys(raw: dict, schema: type, prefix: str = "") -> None:
    """Check a raw config tree against a dataclass schema (unknown keys, value types); every problem of the tree is
    reported in one ConfigError."""
    errors = key_errors(raw, schema, prefix)
    if errors:
        raise combined(errors)


def key_errors(raw: dict, schema: type, prefix: str = "") -> list[ConfigError]:
    """The unknown keys and mistyped values of a raw config tree, one error per key."""
    hints = typing.get_type_hints(schema)
    names = [f.name for f in dataclasses.fields(schema)]
    errors = []
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{near[0]}'?" if near else f"; valid keys: {', '.join(names)}"
            errors.append(ConfigError(f"unknown config key '{path}'{hint}"))
            continue
        try:
            _check_value(path, value, hints[key])
        except ConfigError as e:
            errors.append(e)
    return errors


def _to_plain(node: Any) -> Any:
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def load_yaml(path: str | Path) -> dict:
    """Read a YAML config file into a plain dict, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = _to_plain(OmegaConf.load(path))
    except Exception as e:  # yaml.YAMLError and OmegaConf's own errors
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys to values")
    return raw


def parse_overrides(overrides: list[str]) -> dict:
    """Turn ``a.b=1`` command-line overrides into a nested dict (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
    try:
        return _to_plain(OmegaConf.from_dotlist(list(overrides)))
    except Exception as e:
        raise ConfigError(f"could not parse overrides {overrides}: {e}") from e


def build(schema: type[T], *layers: dict) -> T:
    """Merge raw dict layers (file, then overrides) over the schema's defaults and validate."""
    errors = [e for raw in layers for e in key_errors(raw, schema)]  # the file's and the overrides', together
    if errors:
        raise combined(errors)
    merged = OmegaConf.structured(schema)
    for raw in layers:
        try:
            merged = OmegaConf.merge(merged, raw)
        except Exception as e:  # OmegaConf's ValidationError, with its full key
            key = getattr(e, "full_key", "")
            raise ConfigError(f"{key or 'config'}: {getattr(e, 'msg', e)}") from e
    try:
        return OmegaConf.to_object(merged)  # runs __post_init__ checks
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"invalid config: {e}") from e


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML, as written to a run's ``config.yaml``."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


# --------------------------------------------------------------------------------------------------
# help: the schema as a reader sees it


def field_docs(schema: type) -> dict[str, str]:
    """Each field's docstring: the string literal right under the field in its class body.

    Inherited fields keep their base class's docstring unless the subclass gives the field a new one. A class whose
    source cannot be read (defined in a REPL) contributes none.
    """
    docs: dict[str, str] = {}
    for cls in reversed(schema.__mro__):
        if not dataclasses.is_dataclass(cls):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, after in zip(body, body[1:], strict=False):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[stmt.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _shown(value: Any) -> str:
    """A value as YAML would read it back, on one line (``???``: no default, the config must give it)."""
    if value == "???":
        return "??? (required)"
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, sort_keys=False).strip()
    return text.removesuffix("...").strip()  # a scalar document ends with '...'


def _short_type(tp: Any) -> str:
    """``list[visarl.pipeline.PipelineStep]`` -> ``list[PipelineStep]``."""
    return re.sub(r"(?:\w+\.)+(\w+)", r"\1", _type_name(tp))


def _describe(schema: type, current: Any, defaults: dict, indent: str, lines: list[str]) -> None:
    hints = typing.get_type_hints(schema)
    docs = field_docs(schema)
    for f in dataclasses.fields(schema):
        value, default = getattr(current, f.name), defaults.get(f.name)
        doc = docs.get(f.name, "")
        if dataclasses.is_dataclass(value):  # a section: its fields, indented under its name
            lines.append(f"{indent}{f.name}: {type(value).__name__}")
            lines.extend(f"{indent}    {line}" for line in doc.splitlines())
            _describe(type(value), value, default if isinstance(default, dict) else {}, indent + "  ", lines)
            continue
        shown = f"{_shown(_plain_value(value))}  (default: {_shown(default)})"
        lines.append(f"{indent}{f.name}: {_short_type(hints[f.name])} = {shown}")
        lines.extend(f"{indent}    {line}" for line in doc.splitlines())


def _plain_value(value: Any) -> Any:
    return OmegaConf.to_container(OmegaConf.create({"v": value}))["v"]


def describe_config(cfg: Any, source: str = "") -> str:
    """Every field of ``cfg``'s schema with its type, current value, default and docstring; sections are indented
    under their name (cleanrl's tyro ``--help``, for YAML configs)."""
    schema = type(cfg)
    summary = (schema.__doc__ or "").strip().splitlines()
    head = f"{schema.__name__}" + (f" ({summary[0].replace('``', '')})" if summary else "")
    after = f" after {source} and the overrides" if source else ""
    lines = [head, f"name: type = current value{after}  (default: the schema's value)", ""]
    defaults = OmegaConf.to_container(OmegaConf.structured(schema))
    _describe(schema, cfg, defaults, "", lines)
    return "\n".join(lines)
