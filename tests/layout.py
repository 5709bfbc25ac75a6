"""Where the files of an index's current generation are (tests that look inside the folder)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from lookalike.folder.store import Store


def record_path(index: Path) -> Path:
    """The current generation's JSON (format 2) or ``manifest.json`` (format 1)."""
    n = Store(index).current_generation()
    return index / "manifest.json" if n == 0 else index / "generations" / f"{n}.json"


def record(index: Path) -> dict[str, Any]:
    return json.loads(record_path(index).read_text())


def edit_record(index: Path, change: Callable[[dict[str, Any]], None]) -> None:
    m = record(index)
    change(m)
    record_path(index).write_text(json.dumps(m))


def base(index: Path) -> Path:
    """The folder of the current generation's first segment (the whole index after a build)."""
    m = record(index)
    return index if "segments" not in m else index / "segments" / m["segments"][0]["name"]


def report_path(index: Path) -> Path:
    return Store(index).report_path()
