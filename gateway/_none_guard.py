"""Keeps ``None`` alive whatever cel-expr-python does to its reference count.

cel-expr-python 0.1.3 (the last release) converts each CEL ``null`` it hands to Python
(``Value.plain_value()``, ``Value.value()``, nested ones too) to ``None`` without taking
a reference of its own: every null converted takes one reference from ``None``. On
CPython 3.11, ``None`` is an ordinary object, about 12,000 references strong after the
gateway is imported; when its count reaches zero the interpreter aborts with "Fatal
Python error: none_dealloc: deallocating None". Rules come from peers, and a null needs
no malice: a publish rule without a payload fired with one until session 42, so an
object whose rule fired every 5 s would have stopped its host within a day, and ten
thousand such objects within seconds.

Counting the nulls of each converted value and giving ``None`` a reference for each
(tried in session 42) is exact only as long as every conversion path is found, costs a
walk of every result, and turns into a harmless over-count if a later release fixes the
binding. Instead, once per process, ``None`` is given 2**60 references: what CPython
3.12 does itself for ``None`` (PEP 683, immortal objects), where the leak is harmless.
A process would have to convert a null per nanosecond for 36 years to spend them.

Only where it is needed and only where the layout is the one this relies on: CPython
before 3.12, whose objects begin with their reference count as a ``Py_ssize_t`` (the
count read at ``id(None)`` must be what :func:`sys.getrefcount` says, minus the
reference the call itself holds); elsewhere nothing is changed.
"""

from __future__ import annotations

import ctypes
import platform
import sys

#: References given to ``None`` once (see the module docstring).
NONE_REFERENCES = 1 << 60


def keep_none_alive() -> bool:
    """Give ``None`` :data:`NONE_REFERENCES` references, once per process; True if this
    interpreter needed it and was given them (now or before)."""
    if platform.python_implementation() != "CPython" or sys.version_info >= (3, 12):
        return False
    count = ctypes.c_ssize_t.from_address(id(None))
    if count.value >= NONE_REFERENCES:
        return True  # given already
    if count.value != sys.getrefcount(None) - 1:
        return False  # not the layout this relies on: leave the object alone
    count.value += NONE_REFERENCES
    return True
