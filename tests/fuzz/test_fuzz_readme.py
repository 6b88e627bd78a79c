"""The README's troubleshooting table quotes messages the code really produces (so it cannot drift).

Every code span of the table's first column must be a fixed part of a message string in vist3a/ or nodes/: a
constant piece of a string literal or f-string (implicitly concatenated literals count as one, as Python joins them).
"""

from __future__ import annotations

import ast
import re

from conftest import REPO_ROOT


def _literal_pieces() -> list[str]:
    pieces = []
    for folder in ("vist3a", "nodes"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    pieces.append(node.value)
                elif isinstance(node, ast.JoinedStr):
                    pieces.extend(v.value for v in node.values if isinstance(v, ast.Constant))
    return pieces


def _table_quotes() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Troubleshooting\n", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| `")]
    return [q for row in rows for q in re.findall(r"`([^`]+)`", row.split(" | ")[0])]


def test_troubleshooting_quotes_are_real_messages():
    quotes = _table_quotes()
    assert len(quotes) >= 30
    pieces = _literal_pieces()
    missing = [q for q in quotes if not any(q in p for p in pieces)]
    assert not missing, f"README troubleshooting quotes no message in the code: {missing}"
