"""README.md's example outputs are what the bundled sample gives (scripts/readme_examples.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import readme_examples  # noqa: E402


def test_readme_examples_are_what_their_commands_print(tmp_path):
    """Every generated block of README.md, run again. The sample is built here once more, with
    ``--runtime onnx`` as the README shows it (about 2 s), rather than taken from the session's
    ``demo_index``: that one runs on this machine's calibrated runtime, whose scores are this
    machine's (OpenVINO's differ in the third decimal)."""
    differ = readme_examples.check(ROOT / "README.md", tmp_path)
    assert not differ, "\n".join(differ) + "\nrun: python scripts/readme_examples.py"


def test_normalise_masks_what_varies_and_nothing_else(tmp_path):
    sample = tmp_path / "pkg" / "demo"
    text = (f"indexed 99 of 99 catalogue rows into shop-index in 12.3 s\n"
            f"catalogue      {sample}/catalog.csv (sha256 f1e5512c3304)\n"
            f"built          2026-12-03T08:56:14Z in 1.338 s by lookalike 0.1.0\n"
            f"size on disk   2.1 MB (21355 bytes per product)\n"
            f"wrote {tmp_path}/top5.csv; score 0.5347 in 3 groups\n")
    assert readme_examples.normalise(text, scratch=tmp_path, sample=sample).splitlines() == [
        "indexed 99 of 99 catalogue rows into shop-index in #.## s",
        "catalogue      lookalike/data/demo/catalog.csv (sha256 f1e5512c3304)",
        "built          YYYY-MM-DDThh:mm:ssZ in #.## s by lookalike 0.1.0",
        "size on disk   #.# MB (# bytes per product)",
        "wrote ./top5.csv; score 0.5347 in 3 groups",
    ]


def test_rewrite_replaces_marked_blocks_and_names_the_changed_ones():
    readme = ("# x\n<!-- generated: a -->\nold a\n<!-- /generated -->\ntext\n"
              "<!-- generated: b -->\nsame b\n<!-- /generated -->\n")
    new, changed = readme_examples.rewrite(readme, {"a": "new a\n", "b": "same b\n"})
    assert changed == ["a"] and new == readme.replace("old a", "new a")
    with pytest.raises(SystemExit, match=r"unknown here: \['b'\]"):
        readme_examples.rewrite(readme, {"a": "new a\n"})
    with pytest.raises(SystemExit, match=r"without a README block: \['c'\]"):
        readme_examples.rewrite(readme, {"a": "", "b": "", "c": ""})
