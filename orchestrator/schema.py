"""Typed configuration from YAML: a file read within bounds (size, UTF-8, no aliases, bounded
nesting: any input gives data or one error, in bounded time and memory), ``${VAR}`` expanded, and
plain data validated into frozen dataclasses by their type hints, so a schema lives in one place
(the dataclasses of ``manifest.py``). Every error names the file, the key path (``targets[2].url``)
and what was expected."""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from orchestrator.errors import UserError


class ManifestError(UserError, ValueError):
    """A manifest that cannot be used; the message is one line meant for the user."""

    def __init__(self, source: str, path: str, expected: str) -> None:
        self.source = source
        self.path = path
        self.expected = expected
        where = f"{source}: {path}" if path else source
        super().__init__(f"{where}: {expected}")


def plain(value: Any) -> Any:
    """Dataclass-dumped data as plain JSON/YAML types (tuples as lists)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    return type(value).__name__


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _convert(tp: Any, value: Any, path: str, source: str) -> Any:
    """Check ``value`` against the type hint ``tp`` and build frozen objects."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors: list[ManifestError] = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path, source)
            except ManifestError as exc:
                errors.append(exc)
        # A nested error (deeper key path) is more useful than a generic one.
        deep = [e for e in errors if e.path != path]
        if deep:
            raise deep[0]
        raise ManifestError(source, path, f"expected {_type_name(tp)}, got {_describe(value)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ManifestError(source, path, f"expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ManifestError(source, path, f"expected {_type_name(tp)}, got {_describe(value)}")
        (item_tp, _ellipsis) = typing.get_args(tp)
        return tuple(_convert(item_tp, v, f"{path}[{i}]", source) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ManifestError(source, path, f"expected a mapping, got {_describe(value)}")
        _key_tp, val_tp = typing.get_args(tp)
        return {str(k): _convert(val_tp, {} if v is None else v, f"{path}.{k}", source) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(typing.cast(type, tp), value, path, source)
    if tp is bool:
        if not isinstance(value, bool):
            raise ManifestError(source, path, f"expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ManifestError(source, path, f"expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ManifestError(source, path, f"expected a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str) or not value:
            raise ManifestError(source, path, f"expected a non-empty string, got {_describe(value)}")
        return value
    raise TypeError(f"unsupported manifest type {tp!r}")  # a bug in this module, not user input


def build(cls: type, data: Any, path: str, source: str) -> Any:
    """``data`` validated into the dataclass ``cls`` (recursively, by its type hints)."""
    if not isinstance(data, dict):
        raise ManifestError(source, path or "(top level)", f"expected a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    prefix = f"{path}." if path else ""
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ManifestError(source, f"{prefix}{key}", f"unknown key (expected one of: {known})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], f"{prefix}{name}", source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ManifestError(source, f"{prefix}{name}", "missing required key")
    try:
        return cls(**kwargs)
    except UserError as exc:  # a type's own checks (LoadProfile's) name the section they failed in
        raise ManifestError(source, path or "(top level)", str(exc)) from None


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(value: Any, path: str, source: str) -> Any:
    """Replace ``${VAR}`` in strings (as Compose does); an unset variable is an error."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in os.environ:
                raise ManifestError(source, path, f"environment variable {m.group(1)} is not set")
            return os.environ[m.group(1)]

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v, f"{path}.{k}" if path else str(k), source) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{path}[{i}]", source) for i, v in enumerate(value)]
    return value


MAX_MANIFEST_BYTES = 1 << 20  # a manifest is a page of YAML; anything this big is not one


MAX_DEPTH = 32


class _ManifestLoader(yaml.SafeLoader):
    """SafeLoader without aliases: a manifest needs none, and a "billion laughs" document (aliases
    of aliases) would expand to gigabytes when its values are validated and copied."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.MarkedYAMLError(
                None, None, "YAML aliases (*name) are not allowed in a manifest", event.start_mark
            )
        if self.check_event(yaml.MappingStartEvent, yaml.SequenceStartEvent):
            self._depth = getattr(self, "_depth", 0) + 1
            if self._depth > MAX_DEPTH:
                event = self.peek_event()  # type: ignore[no-untyped-call]
                raise yaml.MarkedYAMLError(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1
        return super().compose_node(parent, index)


def read_manifest_data(path: str | Path) -> Any:
    """A manifest file's YAML as data, read within the same bounds as :func:`load_manifest`
    (not yet validated: a caller may complete it first, e.g. with a Compose file's targets)."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ManifestError(source, "", f"cannot read file ({exc.strerror})") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(source, "", f"expected a YAML manifest, got a file over {MAX_MANIFEST_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(
            source, "", f"expected UTF-8 text, got byte 0x{raw[exc.start]:02x} at offset {exc.start}"
        ) from None
    if "\x00" in text:
        raise ManifestError(source, "", "expected YAML text, got a NUL byte (a binary file?)")
    try:
        data = yaml.load(text, Loader=_ManifestLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ManifestError(source, "", f"{where}{problem}") from None
    except RecursionError:
        raise ManifestError(source, "", f"nested deeper than {MAX_DEPTH} levels") from None
    return data
