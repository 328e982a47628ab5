"""Values of frozen, slotted dataclasses built on hot paths without their ``__init__``.

A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__`` (its
own ``__setattr__`` refuses), with keyword handling around it; every committed cycle
builds several such values. A :func:`builder` sets the slots without it: what
``__init__`` amounts to for a class with no ``__post_init__`` when every field is given.
tests/test_p5_s36.py holds each builder's values equal to their class's own construction.

How: the value is made as an instance of a *draft* class, the class's twin with the same
base and the same slots but no frozen ``__setattr__``, its slots set by plain attribute
stores (which CPython specializes: about 20 instructions each, where calling a slot's
own ``__set__`` went through a generic call and an argument tuple, about 250), and its
class then set to the real one (``__class__`` assignment, allowed between classes of one
layout: same base, same slots). The result is an instance of the class like any other.
A class whose bases define a ``__setattr__`` of their own (a frozen dataclass's
subclass) has no such twin; its slots are set through their descriptors, as before.
"""

from __future__ import annotations

import dataclasses
import functools
import keyword
import operator
import types
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def builder(cls: type[T], *names: str, post_init_done: bool = False) -> Callable[..., T]:
    """A function making ``cls(name=value, ...)`` from the values of ``names``, given by
    position and all of them.

    ``post_init_done``: for a class with a ``__post_init__``, a builder that does not
    call it, for callers whose values it would leave as they are (each such caller says
    why); without it such a class is refused.

    Written out one setter call per field, as dataclasses and namedtuple write their
    own methods: a loop over the setters costs more than the ``__init__`` it replaces
    (about 660 ns against 610 for three fields; written out, 260)."""
    if hasattr(cls, "__post_init__") and not post_init_done:  # its checks would be skipped
        raise TypeError(f"{cls.__name__} has a __post_init__; build it with its __init__")
    draft = _draft(cls, names)
    if draft is not None:
        sets = "".join(f"    made.{name} = value{index}\n" for index, name in enumerate(names))
        return _compiled(cls, draft, names, f"({_values(names)})", sets)
    namespace: dict[str, Any] = {"new": object.__new__, "cls": cls}
    for index, name in enumerate(names):
        namespace[f"set{index}"] = getattr(cls, name).__set__
    values = ", ".join(f"value{index}" for index in range(len(names)))
    sets = "".join(f"    set{index}(made, value{index})\n" for index in range(len(names)))
    # The source holds nothing but these indices: no name or value from anywhere else.
    source = f"def build({values}):\n    made = new(cls)\n{sets}    return made\n"
    exec(source, namespace)  # noqa: S102
    build: Callable[..., T] = namespace["build"]
    build.__doc__ = f"``{cls.__name__}({', '.join(f'{n}=...' for n in names)})``, by position."
    return build


def _draft(cls: type, names: tuple[str, ...]) -> type | None:
    """The class's draft twin (see the module), or None if it cannot have one or one of
    ``names`` is not a slot the twin can set by an attribute store."""
    own = vars(cls).get("__slots__")
    if type(cls) is not type or not isinstance(own, tuple) or len(cls.__bases__) != 1:
        return None
    if any("__setattr__" in vars(base) for base in cls.__mro__[1:-1]):
        return None  # a base's own __setattr__ (frozen) would refuse the stores
    for name in names:
        if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("__"):
            return None
        if type(getattr(cls, name, None)) is not types.MemberDescriptorType:
            return None
    draft = type(f"_{cls.__name__}Draft", cls.__bases__, {"__slots__": own})
    trial: Any = object.__new__(draft)
    try:  # the layouts must match for the class assignment
        trial.__class__ = cls
    except TypeError:
        return None
    return draft


def _values(names: tuple[str, ...]) -> str:
    return ", ".join(f"value{index}" for index in range(len(names)))


def _compiled(
    cls: type[T], draft: type, names: tuple[str, ...], arguments: str, body: str
) -> Callable[..., T]:
    """A function ``build{arguments}`` that makes a draft, runs ``body`` (stores into
    ``made``) and turns the draft into a ``cls``. The source holds only the names of the
    class's slots (identifiers, checked by :func:`_draft`) and positional indices."""
    namespace: dict[str, Any] = {"new": object.__new__, "cls": cls, "draft": draft}
    source = f"def build{arguments}:\n    made = new(draft)\n{body}    made.__class__ = cls\n    return made\n"
    exec(source, namespace)  # noqa: S102
    build: Callable[..., T] = namespace["build"]
    build.__doc__ = f"``{cls.__name__}({', '.join(f'{n}=...' for n in names)})``, by position."
    return build


def tuple_builder(cls: type[T]) -> Callable[[tuple[Any, ...]], T]:
    """A function making ``cls(*values)`` of a NamedTuple class from its values given as
    one tuple, in field order, all of them.

    What the class's own ``__new__`` amounts to (``tuple.__new__(cls, values)``), as one
    C call: that ``__new__`` is a Python function, entered with keyword handling, and
    cost about 5,700 instructions per value against a few hundred (three are built per
    cycle; session 37). Unlike ``__new__`` it does not count the values: callers pass
    every field (tests/test_p5_s37.py holds each builder's values equal to the class's
    own construction)."""
    fields = getattr(cls, "_fields", None)
    if not issubclass(cls, tuple) or not isinstance(fields, tuple):
        raise TypeError(f"{cls.__name__} is not a NamedTuple class")
    build: Callable[[tuple[Any, ...]], T] = functools.partial(tuple.__new__, cls)
    return build


def replacing(cls: type[T], *changed: str) -> Callable[..., T]:
    """``dataclasses.replace(value, name=new, ...)`` for the fields ``changed``, given by
    position: every other field read in one call (``attrgetter``) and the value built
    slot by slot (:func:`builder`), not through the frozen ``__init__`` with every field
    as a keyword (under half the cost: the destination's two copies per arrival, the
    frozen object, its lineage entries and its tombstone; session 37). Only for a class
    whose ``__init__`` takes every field (and, as :func:`builder`, has no
    ``__post_init__``); an unknown name in ``changed`` is a ``ValueError`` at once.
    With a draft twin (see the module) every slot is read and stored by name, written
    out: about a fifth of the cost again (every committed cycle rebuilds its object)."""
    names = tuple(field.name for field in dataclasses.fields(cls))  # type: ignore[arg-type]
    if not all(field.init for field in dataclasses.fields(cls)):  # type: ignore[arg-type]
        raise TypeError(f"{cls.__name__} has a field its __init__ does not take")
    read, build = operator.attrgetter(*names), builder(cls, *names)
    positions = tuple(map(names.index, changed))
    draft = _draft(cls, names)
    if draft is not None:
        # Each kept slot read from the value and stored into the draft, written out.
        body = "".join(
            f"    made.{name} = new{changed.index(name)}\n"
            if name in changed
            else f"    made.{name} = value.{name}\n"
            for name in names
        )
        arguments = f"(value, {', '.join(f'new{i}' for i in range(len(changed)))})"
        return _compiled(cls, draft, names, arguments, body)

    def replaced(value: T, *new: Any) -> T:
        values = list(read(value))
        for position, item in zip(positions, new, strict=True):
            values[position] = item
        return build(*values)

    return replaced


def replacer(cls: type[T]) -> Callable[..., T]:
    """``dataclasses.replace`` for ``cls``, by keyword, any fields: the keyword form of
    :func:`replacing` (which fixes the changed fields and takes them by position, the
    cheaper of the two). ``cls`` is a frozen, slotted dataclass whose fields are all set
    by its ``__init__`` and that has no ``__post_init__`` (:func:`builder` refuses one).
    ``replace`` walks the class's fields, reads each and calls ``__init__`` with
    keywords: about 3.7 us for a source record; this about 1.5 us. An unknown field is a
    ``TypeError``, as with ``replace``."""
    every = dataclasses.fields(cls)  # type: ignore[arg-type]
    if not all(field.init for field in every):
        raise TypeError(f"{cls.__name__} has a field its __init__ does not set")
    names = tuple(field.name for field in every)
    known = frozenset(names)
    build = builder(cls, *names)

    def replaced(value: T, /, **changes: Any) -> T:
        if not known.issuperset(changes):
            unknown = ", ".join(sorted(set(changes) - known))
            raise TypeError(f"{cls.__name__} has no field {unknown}")
        return build(*[changes[n] if n in changes else getattr(value, n) for n in names])

    return replaced
