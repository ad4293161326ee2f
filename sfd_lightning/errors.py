"""User-facing input errors.

Every problem with a user's file is raised as :class:`InputError` whose message names the file
and the fix in one line. ``sfd`` catches it and prints that one line (no traceback), exit code 2.
"""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """A problem with user input: one line that names the file and how to fix it."""

    def __init__(self, path: str | Path | None, problem: str, fix: str = "") -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path else ""
        tail = f" — {fix}" if fix else ""
        super().__init__(f"{where}{problem}{tail}")
