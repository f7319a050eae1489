"""Config files that build on others: a file's ``extends`` names the files it states differences from.

``extends: mlp_mnist.yaml`` (or a list, read in order; paths relative to the extending file) makes the named files
read first, each with its own bases before it, so an experiment config holds only what makes it that experiment
and the defaults every experiment shares live once (``configs/defaults.yaml``; see docs/configs.md). The training
command reads a chain as jsonargparse reads several ``--config`` files, later files overriding earlier ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from lit_dendrite.errors import ConfigError
from lit_dendrite.io import read_yaml, write_text_atomic

EXTENDS = "extends"
"""The key of a config file that names the config files it builds on."""


class ConfigFileError(ConfigError):
    """A config file that cannot be read as a chain; the message names the file, the problem and the fix."""


def read_config(path: str | Path) -> dict[str, Any]:
    """The YAML mapping in ``path`` as written (its ``extends`` included)."""
    path = Path(path)
    data = read_yaml(path, "pass a readable YAML config file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(
            f"config file {path} must hold a YAML mapping of keys to values, not {type(data).__name__}"
        )
    return data


def bases(path: str | Path, config: Mapping[str, Any]) -> list[Path]:
    """The files ``config`` (read from ``path``) names under ``extends``, resolved against ``path``'s folder."""
    named = config.get(EXTENDS)
    if named is None:
        return []
    names = [named] if isinstance(named, str) else named
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigFileError(
            f"{path}: `{EXTENDS}` must name a config file or a list of them (paths relative to {path}), got {named!r}"
        )
    found = [Path(path).parent / name for name in names]
    missing = [str(base) for base in found if not base.is_file()]
    if missing:
        raise ConfigFileError(
            f"{path} extends {', '.join(missing)}, which does not exist; fix the path under `{EXTENDS}` "
            "(relative to the extending file)"
        )
    return found


def config_chain(path: str | Path) -> list[Path]:
    """Every file ``path`` builds on, in the order they are read (each base before the files extending it, a file
    named twice read once, at its first place), ending with ``path`` itself."""
    chain: list[Path] = []

    def visit(file: Path, extending: tuple[Path, ...]) -> None:
        if file in extending:
            cycle = " -> ".join(str(f) for f in (*extending, file))
            raise ConfigFileError(f"config files extend each other in a cycle ({cycle}); remove one `{EXTENDS}`")
        for base in bases(file, read_config(file)):
            visit(base.resolve(), (*extending, file))
        if file not in chain:
            chain.append(file)

    visit(Path(path).resolve(), ())
    return chain


def without_extends(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` minus its ``extends`` key: what the file itself sets."""
    return {key: value for key, value in config.items() if key != EXTENDS}


def merged(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``, mappings merged key by key, every other value (lists included) replaced."""
    result = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def composed_config(path: str | Path) -> dict[str, Any]:
    """The values a chain of config files sets, merged (no parsing, no defaults of the classes): what a quick reader
    such as the cost estimate needs. Training parses the chain (``lit_dendrite.cli``) instead."""
    result: dict[str, Any] = {}
    for file in config_chain(path):
        result = merged(result, without_extends(read_config(file)))
    return result


def copy_chain(path: str | Path, folder: str | Path, copies: dict[Path, Path] | None = None) -> Path:
    """A copy of the config file ``path`` in ``folder``, named by its stem and content, whose ``extends`` names
    copies of its bases made the same way: the chain as it was, whatever happens to the originals later. An
    existing copy is never rewritten; ``copies`` (original -> copy) spares copying a shared base twice."""
    copies = {} if copies is None else copies
    path = Path(path).resolve()
    if path not in copies:
        config, text = read_config(path), path.read_text()
        if EXTENDS in config:
            named = [copy_chain(base, folder, copies).name for base in bases(path, config)]
            text = yaml.safe_dump({EXTENDS: named, **without_extends(config)}, sort_keys=False)
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        copy = Path(folder) / f"{path.stem}-{digest}.yaml"
        if not copy.is_file():
            write_text_atomic(copy, text)
        copies[path] = copy
    return copies[path]
