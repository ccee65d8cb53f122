"""The one error type users see: a message naming the problem and the fix."""

from __future__ import annotations

from collections.abc import Iterable


class BnnExportError(Exception):
    """A user-facing error. The CLI prints ``error: <message>`` and exits non-zero.

    ``hint`` says how to fix it and is printed on a second line.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  fix: {self.hint}"


def unknown_name(kind: str, value: object, valid: Iterable[str]) -> BnnExportError:
    """Error for a name that is not in a registry, listing the valid names."""
    names = ", ".join(sorted(valid))
    return BnnExportError(f"unknown {kind} {value!r}; valid: {names}")
