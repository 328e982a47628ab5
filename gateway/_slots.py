"""Values of frozen, slotted dataclasses built on hot paths without their ``__init__``.

A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__`` (its
own ``__setattr__`` refuses), with keyword handling around it; every committed cycle
builds several such values. A :func:`builder` sets the slots through their own
descriptors instead: what ``__init__`` amounts to for a class with no ``__post_init__``
when every field is given. tests/test_p5_s36.py holds each builder's values equal to
their class's own construction.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def builder(cls: type[T], *names: str) -> Callable[..., T]:
    """A function making ``cls(name=value, ...)`` from the values of ``names``, given by
    position and all of them.

    Written out one setter call per field, as dataclasses and namedtuple write their
    own methods: a loop over the setters costs more than the ``__init__`` it replaces
    (about 660 ns against 610 for three fields; written out, 260)."""
    if hasattr(cls, "__post_init__"):  # its checks would be skipped: not for such a class
        raise TypeError(f"{cls.__name__} has a __post_init__; build it with its __init__")
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
    ``__post_init__``); an unknown name in ``changed`` is a ``ValueError`` at once."""
    names = tuple(field.name for field in dataclasses.fields(cls))  # type: ignore[arg-type]
    if not all(field.init for field in dataclasses.fields(cls)):  # type: ignore[arg-type]
        raise TypeError(f"{cls.__name__} has a field its __init__ does not take")
    read, build = operator.attrgetter(*names), builder(cls, *names)
    positions = tuple(map(names.index, changed))

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
