"""The typed-section machinery: :func:`schema_section` turns a schema table into a frozen,
validating dataclass that also reads as a mapping under the YAML key names."""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Mapping, Self, TypeVar

from moofa.config.fields import Field, _Bad
from moofa.errors import ConfigError

# ------------------------------------------------------------------------------------------------
# Typed sections: one frozen dataclass per schema table, its fields derived from the table (a key
# added to a table is a field of its section). Construction validates every field with the
# table's check and then the section's cross-key rules; it never changes its input. A section is
# also read-only Mapping under the YAML key names (``cfg["search_config"]["seed"]``), which is
# what the resolved-config JSON and the reference-style call sites use.


def _field_default(f: Field) -> Any:
    if f.schema is not None:
        return field(default_factory=lambda: _SECTION_OF[id(f.schema)]())
    if isinstance(f.default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(f.default))
    return f.default


_S = TypeVar("_S", bound="Section")


def schema_section(schema: Mapping[str, Field], where: str) -> Callable[[type[_S]], type[_S]]:
    """Class decorator: make ``cls`` a frozen dataclass with one field per key of ``schema``
    (default and check from the table) and register it as the section of that table.

    The field types are the annotations ``cls`` and its field mixins declare (so type checkers
    see ``settings.population_size`` as ``int``); every key of ``schema`` must be declared, and
    nothing else but extra fields of ``cls`` itself. The defaults stay in the table only."""
    def wrap(cls: type[_S]) -> type[_S]:
        declared: dict[str, Any] = {}
        for base in reversed(cls.__mro__):
            declared.update(base.__dict__.get("__annotations__", {}))
        missing = [name for name in schema if name not in declared]
        if missing:  # a key added to a table needs its typed declaration
            raise TypeError(f"{cls.__name__} does not declare the type of {', '.join(missing)}")
        own = dict(cls.__dict__.get("__annotations__", {}))
        cls.__annotations__ = {**{name: declared[name] for name in schema}, **own}
        for name, f in schema.items():
            setattr(cls, name, _field_default(f))
        cls.SCHEMA, cls.WHERE = schema, where
        out = dataclass(frozen=True, eq=False)(cls)
        _SECTION_OF[id(schema)] = out
        return out
    return wrap


def _checked(f: Field, value: Any, key: str) -> Any:
    """``value`` normalised by ``f`` (a nested mapping becomes its section); ConfigError naming
    ``key`` and the value otherwise."""
    if f.schema is not None:
        cls = _SECTION_OF[id(f.schema)]
        return value if isinstance(value, cls) else cls.from_mapping(value, key)
    try:
        return f.check(value)
    except _Bad as err:
        raise ConfigError(str(err), key=key, value=value) from None


def _mapping(data: Any, key: str) -> dict:
    """``data`` as a dict with string keys (null = empty); ConfigError otherwise."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"must be a mapping, not {type(data).__name__}", key=key, value=data)
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError("keys must be strings", key=f"{key}.{bad[0]}", value=bad[0])
    return dict(data)


def _unknown(data: Mapping, valid: Any, where: str) -> None:
    for k in data:
        if k not in valid:
            raise ConfigError(f"unknown key (valid keys: {', '.join(valid)})",
                              key=f"{where}.{k}" if where else k, value=data[k])


def _rekey(err: ConfigError, old: str, new: str, file: Any = None) -> ConfigError:
    """The same error under another key prefix (and file)."""
    key = err.key
    if key is not None and old != new and (key == old or key.startswith(old + ".")):
        key = new + key[len(old):]
    return ConfigError(err.reason, file=file if file is not None else err.file, key=key,
                       value=err.value)


class Section(Mapping):
    """Base of the typed config sections (see :func:`schema_section`)."""

    SCHEMA: ClassVar[Mapping[str, Field]] = {}
    WHERE: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for name, f in self.SCHEMA.items():
            object.__setattr__(self, name, _checked(f, getattr(self, name), f"{self.WHERE}.{name}"))
        self.check()

    def check(self) -> None:
        """Rules between keys of the section; ConfigError naming the key."""

    @classmethod
    def from_mapping(cls, data: Any, where: str | None = None) -> Self:
        """Validate a mapping (unknown keys refused, missing keys take the table's defaults);
        errors name ``where.key`` (default: the section's YAML name)."""
        where = where or cls.WHERE
        values = _mapping(data, where)
        _unknown(values, cls.SCHEMA, where)
        try:
            return cls(**values)
        except ConfigError as err:
            raise _rekey(err, cls.WHERE, where) from None

    def replace(self, **changes: Any) -> Self:
        """A new, validated section with ``changes``."""
        # every concrete section is a dataclass (schema_section); this base is not
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def as_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON-ready) under the YAML key names."""
        return {k: _plain(v) for k, v in self.items()}

    def __getitem__(self, key: str) -> Any:
        if key not in self.SCHEMA:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.SCHEMA)

    def __len__(self) -> int:
        return len(self.SCHEMA)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.items())})"


def _plain(value: Any) -> Any:
    if isinstance(value, Section):
        return value.as_dict()  # a RunConfig is a Mapping: the branch below is its as_dict
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


_SECTION_OF: dict[int, type[Section]] = {}
