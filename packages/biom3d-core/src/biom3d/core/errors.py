"""Error types. Each carries the process exit code the CLI uses, so every layer can fail the same way.

Exit codes: 1 a run failed, 2 bad input (config, data, command line), 3 a plugin problem.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


class Biom3dError(Exception):
    """Base class: a message meant for the user, one paragraph, naming the culprit and the fix."""

    exit_code = 1


class InputError(Biom3dError):
    """Bad input from the user: data, paths, command-line values."""

    exit_code = 2


class DataError(InputError):
    """A data file is missing, unreadable or inconsistent."""


class PluginError(Biom3dError):
    """A plugin failed in strict mode, or a run needs a plugin that is not installed."""

    exit_code = 3


class SpecError(ValueError):
    """A spec record is malformed; raised inside the offending plugin's hook, so that plugin alone fails."""


@dataclass(frozen=True)
class Problem:
    """One validation problem, located by a dotted path such as ``model.params.num_pools[2]``."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(InputError):
    """A config failed validation; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem] | str, *, source: str | None = None):
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        self.problems = list(problems)
        self.source = source
        head = f"invalid config {source}" if source else "invalid config"
        n = len(self.problems)
        lines = [f"{head}: {n} problem{'s' if n != 1 else ''}"]
        lines += [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class RunError(Biom3dError):
    """A run folder is missing, incomplete, or would be overwritten."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or nothing: appended to an error's message."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
