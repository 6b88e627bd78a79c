"""The clear-error contract every fuzz case asserts, and the makers of malformed inputs.

A case passes when the bad input ends as ONE clear message -- ``vist3a <cmd>: error: ...`` on stderr with exit code 2
(never a traceback, never an exception escaping ``main``), or ``ValueError("NodeName: ...")`` from a node --, the
message names the file or argument, never suggests ``weights_only=False``, nothing partial is left in the output
folder, an output that existed before is byte-for-byte untouched, no model was loaded when the input could be
checked first, and no pickle payload ran.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from vist3a.cli import main

SENTINEL = b"an earlier result that must survive\n" * 64


@dataclass
class Outcome:
    rc: int
    err: str
    out: str


def run_cli(argv: list[str], capsys) -> Outcome:
    """``vist3a ARGV`` in-process; any exception escaping ``main`` fails the test (it would be a traceback)."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return Outcome(rc, captured.err, captured.out)


def assert_clear_cli(outcome: Outcome, command: str, *names: str) -> str:
    """Exit code 2, one ``vist3a <command>: error: ...`` message naming every one of ``names``, no traceback, no
    weights_only advice. Returns the message."""
    err = outcome.err
    assert outcome.rc == 2, f"exit code {outcome.rc}, stderr:\n{err}"
    assert "Traceback" not in err and "internal error" not in err, err
    assert "weights_only" not in err and "huggingface-cli" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith(("vist3a ", "vist3a:"))]
    assert len(lines) == 1 and lines[0].startswith(f"vist3a {command}: error: "), err
    message = err[err.index(f"vist3a {command}: error: "):]
    for name in names:
        assert str(name) in message, f"{name!r} not named in:\n{message}"
    return message


def assert_clear_value_error(err: BaseException, prefix: str = "", *names: str) -> str:
    """A ValueError whose message starts with ``prefix`` and names ``names``; no weights_only advice, and nothing
    of torch's own hint in the exception chain either."""
    assert isinstance(err, ValueError), f"{type(err).__name__}: {err}"
    message = str(err)
    assert message.startswith(prefix), message
    chain = err
    while chain is not None:
        assert "weights_only" not in str(chain), str(chain)
        chain = chain.__cause__ or (None if chain.__suppress_context__ else chain.__context__)
    for name in names:
        assert str(name) in message, f"{name!r} not named in:\n{message}"
    return message


# ============================================================================================ folder snapshots
def snapshot(folder: Path) -> dict[str, str]:
    """Every entry below ``folder`` (hidden ones included) -> hash of its content ('dir' / 'other' for the rest)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_file():
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = "other"
    return out


def assert_unchanged(folder: Path, before: dict[str, str]) -> None:
    """Nothing added (no partial output, no temporary file), nothing changed or removed."""
    after = snapshot(folder)
    assert after == before, {"added": sorted(set(after) - set(before)), "removed": sorted(set(before) - set(after)),
                             "changed": sorted(k for k in before if k in after and after[k] != before[k])}


# ============================================================================================ malicious pickles
class Payload:
    """Unpickling this runs ``open(marker, "w")``, i.e. creates the marker file: a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_raw_pickle(path: Path, marker: Path) -> Path:
    with open(path, "wb") as fh:
        pickle.dump({"weights": Payload(marker)}, fh, protocol=2)
    return path


def write_zip_pickle(path: Path, marker: Path) -> Path:
    """A real torch.save zip archive whose data.pkl carries the payload next to real tensors."""
    torch.save({"lora": {"x": torch.zeros(2)}, "payload": Payload(marker)}, path)
    assert not marker.exists()  # saving never runs it
    return path


# ============================================================================================ damaged files
def truncate(src: Path, dst: Path, keep: float) -> Path:
    data = src.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    dst.write_bytes(data[:n])
    return dst


def safetensors_bytes(header: bytes, body: bytes = b"", length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + body
