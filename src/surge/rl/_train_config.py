"""The config file of ``surge rl train``: YAML or TOML, checked key by key.

One file says everything a run needs: where it writes (``output``), how long it runs
(``steps``, ``eval_every``, ``save_every``), the task (the word problems that ship with
surge, or a JSONL/Parquet dataset), the tokenizer (trained here, or loaded), the model
(built from a config, or loaded), an optional supervised warm-up, and every field of
:class:`~surge.rl.RLConfig` under ``rl``. A typo, a wrong type or a missing dataset
column stops the run before it starts, naming the key, the file and the line.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from surge.rl._config import RLConfig
from surge.rl._errors import RLError

__all__ = ["ConfigError", "TrainConfig", "load_train_config"]


class ConfigError(RLError):
    """A config file that cannot run: the message names the key, the file and the line."""


@dataclass(frozen=True)
class TaskSection:
    kind: Literal["word_problems", "dataset"] = "word_problems"
    # word_problems
    train_size: int = 2000
    eval_size: int = 200
    max_operand: int = 9
    kinds: list[str] = field(default_factory=lambda: ["add", "sub"])
    seed: int = 0
    # dataset
    train: str | None = None
    eval: str | None = None
    reward: str = "gsm8k"
    prompt_column: str = "prompt"
    # both
    max_new_tokens: int = 8
    chat_template: bool = True


@dataclass(frozen=True)
class TokenizerSection:
    path: str | None = None
    vocab_size: int = 512
    chat_template: str | None = None


@dataclass(frozen=True)
class ModelSection:
    path: str | None = None
    kind: str = "gpt2"
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    lora: dict[str, Any] | None = None


@dataclass(frozen=True)
class WarmupSection:
    steps: int = 0
    target: Literal["random_answer", "first_number"] = "random_answer"
    lr: float = 1e-3
    batch_size: int = 32


@dataclass(frozen=True)
class TrainConfig:
    """A parsed, checked ``surge rl train`` config."""

    output: str
    steps: int = 100
    eval_every: int = 25
    save_every: int = 50
    device: str | None = None
    task: TaskSection = field(default_factory=TaskSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    model: ModelSection = field(default_factory=ModelSection)
    warmup: WarmupSection = field(default_factory=WarmupSection)
    rl: RLConfig = field(default_factory=RLConfig)
    source: str = ""
    """The file this config came from (for messages and the run folder's copy)."""


_SECTIONS: dict[str, type[Any]] = {
    "task": TaskSection,
    "tokenizer": TokenizerSection,
    "model": ModelSection,
    "warmup": WarmupSection,
    "rl": RLConfig,
}


def load_train_config(path: str | Path) -> TrainConfig:
    """Read and check a YAML (``.yaml``/``.yml``) or TOML (``.toml``) config."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such config file. HINT: check the path.")
    text = path.read_text(encoding="utf-8")
    lines = _YamlLines(text) if path.suffix in (".yaml", ".yml") else _TomlLines(text)
    raw = _parse(path, text)
    return _build(raw, path, lines)


def _parse(path: Path, text: str) -> dict[str, Any]:
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f", line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{where}: not valid YAML ({exc}).") from None
    elif path.suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc}).") from None
    else:
        raise ConfigError(
            f"{path}: unknown config format {path.suffix!r}. HINT: use .yaml, .yml or .toml."
        )
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys to values.")
    return data


# -- where a key is written --------------------------------------------------------------


class _YamlLines:
    """Line numbers of YAML keys, from the composed node tree."""

    def __init__(self, text: str) -> None:
        import yaml

        self.lines: dict[tuple[str, ...], int] = {}
        try:
            root = yaml.compose(text)
        except yaml.YAMLError:
            return
        if root is not None:
            self._walk(root, ())

    def _walk(self, node: Any, prefix: tuple[str, ...]) -> None:
        import yaml

        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = (*prefix, str(key.value))
                self.lines[name] = key.start_mark.line + 1
                self._walk(value, name)

    def line(self, key: tuple[str, ...]) -> int | None:
        return self.lines.get(key)


class _TomlLines:
    """Line numbers of TOML keys: ``[section]`` headers and ``key =`` lines."""

    _HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-]+)\s*\]")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*=")

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple[str, ...], int] = {}
        section: tuple[str, ...] = ()
        for number, line in enumerate(text.splitlines(), start=1):
            if m := self._HEADER.match(line):
                section = tuple(m.group(1).split("."))
                self.lines.setdefault(section, number)
            elif m := self._KEY.match(line):
                self.lines.setdefault((*section, m.group(1)), number)

    def line(self, key: tuple[str, ...]) -> int | None:
        return self.lines.get(key)


_Lines = _YamlLines | _TomlLines


def _where(path: Path, lines: _Lines, key: tuple[str, ...]) -> str:
    number = lines.line(key)
    while number is None and len(key) > 1:
        key = key[:-1]
        number = lines.line(key)
    return f"{path}, line {number}" if number is not None else str(path)


# -- checking ------------------------------------------------------------------------------


def _type_ok(value: Any, hint: Any) -> bool:
    origin = get_origin(hint)
    if hint is Any:
        return True
    if origin is Literal:
        return value in get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, h) for h in get_args(hint))
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
    if origin is list:
        (inner,) = get_args(hint) or (Any,)
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _describe(hint: Any) -> str:
    origin = get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(h) for h in get_args(hint))
    if hint is type(None):
        return "null"
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    if origin is list:
        return "a list"
    if origin is dict:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _check_section(
    cls: type[Any], data: Any, key: tuple[str, ...], path: Path, lines: _Lines
) -> dict[str, Any]:
    dotted = ".".join(key)
    if not isinstance(data, dict):
        raise ConfigError(
            f"{_where(path, lines, key)}: {dotted} must be a mapping of keys to values, "
            f"got {data!r}."
        )
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.init and f.name != "source"]
    for name, value in data.items():
        full = (*key, str(name))
        where = _where(path, lines, full)
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}."
            raise ConfigError(f"{where}: unknown key {'.'.join(full)!r}. HINT: {hint}")
        if name in _SECTIONS and not key:
            continue  # checked on its own
        if not _type_ok(value, hints[name]):
            raise ConfigError(
                f"{where}: {'.'.join(full)} must be {_describe(hints[name])}, got {value!r}. "
                "HINT: fix the value's type (quotes make a string, 3 is an integer, 3.0 a "
                "number)."
            )
    return dict(data)


def _build(raw: dict[str, Any], path: Path, lines: _Lines) -> TrainConfig:
    top = _check_section(TrainConfig, raw, (), path, lines)
    if "output" not in top:
        raise ConfigError(
            f"{path}: missing key 'output'. HINT: output: runs/my-run (the run folder)."
        )
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        values = _check_section(cls, top.pop(name, {}) or {}, (name,), path, lines)
        try:
            sections[name] = cls(**values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{_where(path, lines, (name,))}: {name}: {exc}") from None
    for name in ("steps", "eval_every", "save_every"):
        if name in top and top[name] < (1 if name == "steps" else 0):
            raise ConfigError(
                f"{_where(path, lines, (name,))}: {name} must be >= "
                f"{1 if name == 'steps' else 0}, got {top[name]}. HINT: 0 turns "
                "eval_every/save_every off."
            )
    task: TaskSection = sections["task"]
    if task.kind == "dataset" and task.train is None:
        raise ConfigError(
            f"{_where(path, lines, ('task',))}: task.kind is 'dataset' but task.train is "
            "not set. HINT: train: data/train.jsonl (a .jsonl or .parquet file)."
        )
    return TrainConfig(**top, **sections, source=str(path))


def where_key(config: TrainConfig, key: tuple[str, ...]) -> str:
    """``file, line N`` of ``key`` in the config file (for errors found while building)."""
    path = Path(config.source)
    if not path.exists():
        return str(path)
    text = path.read_text(encoding="utf-8")
    lines = _YamlLines(text) if path.suffix in (".yaml", ".yml") else _TomlLines(text)
    return _where(path, lines, key)
