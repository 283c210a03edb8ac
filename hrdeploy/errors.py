"""Errors a user can fix. The CLI prints them as one line and exits with status 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a missing prerequisite: the message says what is wrong and what to do."""

    exit_code = 2


def missing_dependency(package: str, extra: str | None = None, purpose: str = "") -> UserError:
    """The error for an optional dependency that is not installed."""
    how = f"pip install 'hrdeploy[{extra}]'" if extra else f"pip install {package}"
    what = f" (needed for {purpose})" if purpose else ""
    return UserError(f"{package} is not installed{what}; install it with: {how}")
