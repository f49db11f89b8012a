"""Which handlers take a message: by payload type (walking its classes) or by routing key."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from busway._internal.registry import HandlerDefinition
from busway.conversion import type_name
from busway.handlers import Kind


class Router:
    def __init__(self, definitions: list[HandlerDefinition]) -> None:
        self.problems: list[str] = []
        self.by_name: dict[str, HandlerDefinition] = {}
        self._by_type: dict[Kind, dict[type[Any], list[HandlerDefinition]]] = defaultdict(dict)
        self._by_key: dict[Kind, dict[str, list[HandlerDefinition]]] = defaultdict(dict)
        self._kind_of_key: dict[str, Kind] = {}
        self._cache: dict[tuple[Kind, type[Any]], list[HandlerDefinition]] = {}
        self._type_names: dict[str, type[Any]] = {}
        for definition in definitions:
            self._add(definition)

    def _add(self, definition: HandlerDefinition) -> None:
        info = definition.info
        name = info.name  # unique: the registry numbers a second handler of one name
        self.by_name[name] = definition
        if info.key is not None:
            known = self._kind_of_key.setdefault(info.key, info.kind)
            if known is not info.kind:
                self.problems.append(
                    f"routing key {info.key!r} is taken by both a {known.value} handler and "
                    f"{info.kind.value} handler {name}; give them different keys"
                )
            targets = self._by_key[info.kind].setdefault(info.key, [])
            what = f"routing key {info.key!r}"
        else:
            assert info.payload_type is not None
            targets = self._by_type[info.kind].setdefault(info.payload_type, [])
            self._type_names[type_name(info.payload_type)] = info.payload_type
            what = type_name(info.payload_type)
        if targets and info.kind is not Kind.EVENT:
            self.problems.append(
                f"{info.kind.value} {what} has two handlers, {targets[0].name} and {name}; "
                f"a {info.kind.value} has exactly one handler, so remove or re-route one of them"
            )
        targets.append(definition)

    def by_key(self, kind: Kind, key: str) -> list[HandlerDefinition]:
        return self._by_key[kind].get(key, [])

    def by_type(self, kind: Kind, payload_type: type[Any]) -> list[HandlerDefinition]:
        cached = self._cache.get((kind, payload_type))
        if cached is None:
            table = self._by_type[kind]
            cached = []
            for cls in payload_type.__mro__:
                cached.extend(table.get(cls, ()))
                if cached and kind is not Kind.EVENT:
                    break
            self._cache[(kind, payload_type)] = cached
        return cached

    def kind_of_key(self, key: str) -> Kind | None:
        return self._kind_of_key.get(key)

    def payload_class(self, name: str) -> type[Any] | None:
        """The class a type name in a message's headers stands for, among the handled ones."""
        found = self._type_names.get(name)
        if found is None:
            for cls in list(self._type_names.values()):
                for sub in _subclasses(cls):
                    self._type_names.setdefault(type_name(sub), sub)
            found = self._type_names.get(name)
        return found


def _subclasses(cls: type[Any]) -> list[type[Any]]:
    found: list[type[Any]] = []
    pending = list(cls.__subclasses__())
    while pending:
        sub = pending.pop()
        found.append(sub)
        pending.extend(sub.__subclasses__())
    return found
