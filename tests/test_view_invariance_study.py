"""benchmarks/view_invariance_study.py (issue 22 item 2): its candidates do what they are named for
on real photos, and its verdict follows from its numbers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from lookalike import demo_catalog
from lookalike.reading.images import model_input

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((demo_catalog().parent / "images").glob("*.jpg"))[:3]


def _study():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("view_invariance_study", ROOT / "benchmarks" / "view_invariance_study.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


study = _study()


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    enc = study._encoder("default")
    return np.stack([model_input(p, enc.preprocess) for p in PHOTOS])


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_flip_average_gives_a_mirrored_photo_the_same_vector_and_mirror_pooling_nearly(pixels):
    mirrored = np.ascontiguousarray(pixels[:, :, ::-1])
    plain = study._encoder("default")
    before = _cos(plain.encode_pixels(pixels), plain.encode_pixels(mirrored))
    flip = study._encoder("flip-average")
    a = flip.encode_pixels(pixels)
    assert a.shape == plain.encode_pixels(pixels).shape and a.dtype == np.float32
    assert np.allclose(a, flip.encode_pixels(mirrored), atol=1e-6)  # by construction: both passes, summed
    mirror = study._encoder("mirror-pooled")
    after = _cos(mirror.encode_pixels(pixels), mirror.encode_pixels(mirrored))
    # the network is not exactly mirror-equivariant, but the pooled grid no longer tells left from right
    assert (after > before).all() and (after - before).mean() > 0.05, (before, after)


def _result(name: str, r1: float, p5: float, passes: int = 1) -> dict:
    return {"name": name, "pooling": "grid2", "model_passes": passes,
            "weights": {"0.15": {"queries": 95, "r@1": r1, "r@5": 0.9, "p@5 type": p5, "p@5 type+colour": 0.35}}}


def test_the_verdict_names_only_what_wins_on_both_at_no_extra_work():
    base = _result("default", 0.5, 0.76)
    both = study.section({"machine": {"cpu": "x"}, "command": "c",
                          "candidates": [base, _result("a", 0.6, 0.76), _result("b", 0.7, 0.75),
                                         _result("c", 0.7, 0.77, passes=2)]})
    assert "at no extra model work: a at 0.15." in both
    none = study.section({"machine": {"cpu": "x"}, "command": "c", "candidates": [base, _result("b", 0.7, 0.75)]})
    assert "the defaults stay" in none and "`b` +19 queries first" in none
