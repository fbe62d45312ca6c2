"""One registry for each kind of plug-in: methods, metrics and domains.

An entry is an object, or a lazy `"module:attribute"` string imported when the name is first asked for. A name is
registered once: a second, different entry under it is refused. A package installed with pip adds its own through
Python entry points, read on first use, in the groups `benchmark.methods`, `benchmark.metrics` and
`benchmark.domains`:

    [project.entry-points."benchmark.metrics"]
    sharpness = "my_package.metrics:Sharpness"

Written here rather than taken from a library because what it needs is small (lazy entries, entry points, a
one-line refusal) and each kind is used as a plain mapping by the rest of the code.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from importlib import metadata


def load(target: str):
    """The object a `"module:attribute"` string names."""
    module, _, attribute = target.partition(":")
    obj = importlib.import_module(module)
    for part in filter(None, attribute.split(".")):
        obj = getattr(obj, part)
    return obj


class Registry:
    """Named entries of one kind; iterate or index it like a dict (entries are loaded when read)."""

    def __init__(self, kind: str, group: str, entries: dict | None = None):
        self.kind, self.group = kind, group
        self._entries: dict[str, object] = {}
        self._plugins_read = False
        for name, entry in (entries or {}).items():
            self.register(name, entry)

    def register(self, name: str, entry) -> None:
        """Add `entry` (an object or a `"module:attribute"` string) under `name`; the same entry again is a no-op."""
        held = self._entries.get(name)
        if held is not None and held is not entry and held != entry:
            where = held if isinstance(held, str) else f"{getattr(held, '__module__', '?')}"
            raise ValueError(f"a {self.kind} named {name!r} is already registered ({where})")
        self._entries[name] = entry

    def add(self, cls):
        """Class decorator: register `cls` under its `name`."""
        self.register(cls.name, cls)
        return cls

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def _read_plugins(self) -> None:
        """The entry points of installed packages, once (a name already taken is refused, naming the package)."""
        if self._plugins_read:
            return
        self._plugins_read = True
        for point in metadata.entry_points(group=self.group):
            if point.name in self._entries and self._entries[point.name] != point.value:
                package = point.dist.name if getattr(point, "dist", None) else point.value
                raise ValueError(f"the installed package {package} registers a {self.kind} named {point.name!r}, "
                                 f"which is taken ({self._entries[point.name]!r}): uninstall one or rename it")
            self._entries[point.name] = point.value

    def __getitem__(self, name: str):
        self._read_plugins()
        entry = self._entries[name]
        if isinstance(entry, str):
            try:
                entry = load(entry)
            except (ImportError, AttributeError) as err:
                raise ValueError(f"cannot load {self.kind} {name!r} from {entry}: {err}") from err
            self._entries[name] = entry
        return entry

    def __contains__(self, name: object) -> bool:
        self._read_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._read_plugins()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self._read_plugins()
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self)

    def values(self) -> list:
        return [self[name] for name in self]

    def items(self) -> list[tuple[str, object]]:
        return [(name, self[name]) for name in self]
