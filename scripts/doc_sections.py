"""Put a generated section into a Markdown document: the section-writing scripts' one helper."""

from __future__ import annotations

from pathlib import Path


def put_section(doc_path: Path, heading: str, text: str, *, before: str | None = "## Quality: P@5") -> None:
    """Replace the section that starts with ``heading`` (up to the next ``## ``) with ``text`` where
    it stands, or insert ``text`` before the section starting ``before`` (at the end without one,
    or with ``before=None``)."""
    doc = doc_path.read_text()
    start = doc.find("\n" + heading + "\n")
    if start >= 0:
        end = doc.find("\n## ", start + 1)
        end = end if end >= 0 else len(doc)
    else:
        start = end = doc.find("\n" + before) if before and ("\n" + before) in doc else len(doc)
    doc_path.write_text(doc[:start].rstrip("\n") + "\n\n" + text.strip("\n") + "\n" + doc[end:])
