"""Fenced code blocks of a Markdown guide, for the tests that run or check docs/*.md as written."""

from __future__ import annotations

import re
from pathlib import Path


def fenced_blocks(path: Path) -> list[tuple[int, str, str]]:
    """(first line of the body, info string such as ``bash run``, body text) of each fenced block."""
    found, lines, i = [], path.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        opening = re.match(r"^```([\w ]*)\s*$", lines[i])
        if opening:
            start, body = i + 1, []
            i += 1
            while lines[i] != "```":
                body.append(lines[i])
                i += 1
            found.append((start, opening[1].strip(), "\n".join(body) + "\n"))
        i += 1
    return found
