"""LightningCLI configs as plain dicts: load and merge recipe files, read and set dotted paths.

The config is kept as the user wrote it (no defaults added, class names as given) because it is hashed to
recognise a study's recipe on resume and written back as ``best.yaml``. Passing it through LightningCLI's
parser would add every default and resolve every class name; jsonargparse's ``dict_to_namespace`` (which
would give dotted paths for free) is deprecated for exactly that reason and replaces a class given by name
(``optimizer: NAGGS``) when a path below it is set. Every config is still parsed and built by LightningCLI
(:func:`naggs_lightning.cli.build_cli`) before a study uses it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import yaml

from naggs_lightning.tune.errors import TuneError

__all__ = ["ConfigSource", "load_config", "get_path", "set_path", "with_params", "dump_config"]

ConfigSource = Union[str, "os.PathLike[str]", Mapping[str, Any]]


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    # Later files win key by key, as LightningCLI does with several --config; lists are replaced whole.
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read(source: ConfigSource) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    path = Path(source)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TuneError(f"cannot read config {str(path)!r}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise TuneError(f"config {str(path)!r} is not valid YAML{at}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise TuneError(
            f"config {str(path)!r} must be a YAML mapping (model:, data:, trainer:, ...), got {type(data).__name__}"
        )
    return data


def load_config(sources: ConfigSource | Sequence[ConfigSource]) -> dict[str, Any]:
    """Read one or several YAML files (or mappings) and merge them in order."""
    if isinstance(sources, (str, os.PathLike, Mapping)):
        sources = [sources]
    config: dict[str, Any] = {}
    for source in sources:
        config = _merge(config, _read(source))
    return config


def get_path(config: Mapping[str, Any], path: str, default: Any = None) -> Any:
    """The value at dotted ``path`` (``"optimizer.init_args.lr"``), or ``default``."""
    node: Any = config
    for key in path.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


def set_path(config: dict[str, Any], path: str, value: Any) -> None:
    """Set dotted ``path`` in place, creating mappings on the way.

    A class given by name only (``optimizer: NAGGS``) becomes ``{class_path: NAGGS, init_args: {}}``
    so that its ``init_args`` can be set.
    """
    keys = path.split(".")
    node = config
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if isinstance(child, str) and keys[i + 1] == "init_args":
            child = {"class_path": child, "init_args": {}}
        elif child is None:
            child = {}
        elif not isinstance(child, dict):
            raise TuneError(f"cannot set {path!r}: {'.'.join(keys[: i + 1])!r} is {child!r}, not a mapping")
        node[key] = child
        node = child
    node[keys[-1]] = value


def with_params(config: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``config`` with every dotted ``params`` key set."""
    out = copy.deepcopy(dict(config))
    for path, value in params.items():
        set_path(out, path, value)
    return out


def dump_config(config: Mapping[str, Any], path: Path, header: str = "") -> None:
    """Write ``config`` as YAML atomically (several workers may write the same file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(header + yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False))
    os.replace(tmp, path)
