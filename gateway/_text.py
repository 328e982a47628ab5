"""Words from outside, shown at a terminal as they are.

An object's words (its data, rule names, entries' details), a peer's (a refusal, an
abort reason, what a signer wrote) and a file's reach the operator's terminal through
rich, which reads a ``str`` as markup (a "[/bold]" raised MarkupError: exit 70 for as
long as the words were stored) and prints escape sequences as they are (which clear the
screen, retitle the terminal or write to its clipboard). Everything printed from outside
goes through :func:`printable` (a line) or :func:`plain` (a table cell or title).
"""

from __future__ import annotations

from rich.text import Text


def printable(text: str) -> str:
    """``text`` with every character that is not printable shown as ``?``."""
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


def plain(text: str | Text) -> Text:
    """A table cell or title that shows ``text`` as it is, not read as markup, its
    unprintable characters shown as ``?`` (a ``Text`` is already that, and kept)."""
    return text if isinstance(text, Text) else Text(printable(text))


def plain_lines(text: str) -> Text:
    """:func:`plain`, keeping the text's own line breaks (which :func:`printable` would
    show as ``?``)."""
    return Text("\n").join(plain(line) for line in text.split("\n"))
