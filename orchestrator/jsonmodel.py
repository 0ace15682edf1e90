"""Typed views of the JSON documents a run keeps (report.json, run.json): declared fields typed,
every other key kept, keys written back in the order they were read, so that reading a document
and writing it back changes nothing (``Node.from_json(d).to_json() == d``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Self

_META = ("extra", "keys")


def _dump(value: Any) -> Any:
    if isinstance(value, Node):
        return value.to_json()
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_dump(v) for v in value]
    return value


@dataclass(kw_only=True)
class Node:
    """A typed view of one JSON object: its declared fields typed, the other keys kept in
    ``extra``, ``keys`` the order the object was read in (empty when built in code)."""

    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    keys: tuple[str, ...] = field(default=(), repr=False, compare=False)
    # key -> how that declared field is read from JSON (the nested nodes)
    READERS: ClassVar[Mapping[str, Callable[[Any], Any]]] = {}

    @classmethod
    def declared(cls) -> tuple[str, ...]:
        """The declared fields' names, in order."""
        return _declared(cls)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """Read one object (keys it does not declare go to ``extra``)."""
        declared = set(cls.declared())
        values = {k: cls.READERS.get(k, _same)(v) for k, v in data.items() if k in declared}
        extra = {k: v for k, v in data.items() if k not in declared}
        return cls(**values, extra=extra, keys=tuple(data))

    def to_json(self) -> dict[str, Any]:
        """Plain data: built in code, the declared fields in order, then ``extra``; read from JSON,
        the keys in the order read, then what was set since (a declared field off its default, a
        new ``extra`` key), so that a document read and written back is unchanged."""
        declared = self.declared()
        if not self.keys:
            order: tuple[str, ...] = (*declared, *self.extra)
        else:
            later = [k for k in declared if k not in self.keys and getattr(self, k) != _default(type(self), k)]
            order = (*self.keys, *later, *(k for k in self.extra if k not in self.keys))
        return {
            k: _dump(getattr(self, k)) if k in declared else self.extra[k]
            for k in order
            if k in declared or k in self.extra
        }

    def get(self, key: str, default: Any = None) -> Any:
        """A value by name, declared or not (a task's own figures); ``default`` where it is None
        or absent."""
        value = getattr(self, key) if key in self.declared() else self.extra.get(key)
        return default if value is None else value


def _same(value: Any) -> Any:
    return value


_DECLARED: dict[type, tuple[str, ...]] = {}


def _declared(cls: type) -> tuple[str, ...]:
    # Once per class: dataclasses.fields walks the class, and get() is called per figure rendered.
    found = _DECLARED.get(cls)
    if found is None:
        found = _DECLARED[cls] = tuple(f.name for f in fields(cls) if f.name not in _META)
    return found


def _default(cls: type, name: str) -> Any:
    """A declared field's default value."""
    for f in fields(cls):
        if f.name == name:
            if f.default_factory is not MISSING:
                return f.default_factory()
            return None if f.default is MISSING else f.default
    raise KeyError(name)
