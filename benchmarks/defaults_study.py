"""Defaults chosen across catalogues (issue 22, item 1): P@5 per labelled catalogue for each input.

Every labelled catalogue we have, each product a query, top 5 (duplicates collapsed, as
docs/quality.md counts):

* ``fashion-2906``: the reference catalogue (``../shared/datasets/fashion-images``, photos cut to
  512 px), relevance same ``ProductType`` / same ``ProductType`` and ``Colour``, of the query's Gender;
* ``fullres-200``: 200 of the same kind of products at their original resolution (360x480 to
  1800x2400), the same labels. Small: one hit of one query is 0.001 of P@5;
* ``store-demos``: 25 products of two shop platforms' demo data (electronics, dresses), each by
  its main photo (a one-photo-a-row copy of ``catalog.csv``, as the reference recipe needs),
  relevance same ``category``; no Gender. Tiny: one hit is 0.008;
* ``store-demos-all``: the same 25 products with all their 97 photos (best-photo scoring, as
  searches do); lookalike only, the reference recipe takes one photo a product;
* ``clothing-5k`` (with ``--clothing DIR``, a clone of github.com/alexeygrigorev/clothing-dataset,
  CC0): 5,000 photos of worn and laid-out clothes that 32 people took at home (floors, beds,
  hangers, most 400x533 px), the project has never seen; relevance same ``label`` (T-Shirt, Pants,
  Shoes, ... 17 of them), no Gender; rows labelled ``Not sure``, ``Skip`` or ``Other`` are left out.

Candidates are not the full cross product: the default (trimmed, fitted on white, 256 px,
grid2), the previous default (whole photo squashed to 320 px) and one factor at a time around
the default (no trim; squash; 224 and 320 px; GeM pooling), each at colour weight 0 and 0.15
(a query-time setting: no rebuild). The reference recipe (``benchmarks/reference_recipe.py``:
full decode, squash to 224, EfficientNet-Lite0's unpooled map, Euclidean) is built as a whole
process and evaluated with its own ``evaluate_p_at_k`` (query's Gender, byte-identical photos
excluded). ``fullres-200`` is built by ``lookalike -q build`` as a whole process too, right
after the reference's own build of it, so each candidate's build time sits next to the build
target (>= 5x the reference, docs/benchmarks.md) on the same, shared, machine.

    python benchmarks/defaults_study.py --out benchmarks/results/defaults.json --doc docs/quality.md

``--doc`` writes docs/quality.md's "Defaults across catalogues (issue 22)" section; ``--merge``
runs only the named ``--catalogues`` and puts them into ``--out``'s results beside those already there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import describe, print_machine  # noqa: E402  # benchmarks/ is the script's folder

from lookalike import Recommender, build  # noqa: E402
from lookalike.analysis.evaluate import ALL, evaluate  # noqa: E402
from lookalike.reading.images import BACKGROUND_TOLERANCE, open_image, trim_background  # noqa: E402
from scripts.doc_sections import put_section  # noqa: E402  # the repository's root is on the path

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "datasets"
WEIGHTS = (0.0, 0.15)
UNIFORM = 0.95  # a photo's background is uniform when this share of its border is the border's median colour
HEADLINE = "0.15"  # the default colour weight: the verdict is taken there
SECTION = "## Defaults across catalogues (issue 22)"


@dataclass(frozen=True)
class Catalogue:
    csv: Path
    images: Path
    labels: tuple[str, ...]
    same: str | None
    id_column: str = "ProductId"
    image_column: str = "Image"
    reference: bool = True  # the reference recipe takes one photo a row, ids as numbers


def _store_main(folder: Path) -> Path:
    """store-demos one photo a row (its main one), in the reference recipe's columns: numeric ids,
    ``ProductType`` the category, one ``Gender`` for all and a constant ``Colour`` (not scored)."""
    table = pd.read_csv(DATA / "store-demos" / "catalog.csv", dtype=str, keep_default_na=False)
    out = pd.DataFrame({"ProductId": range(1, len(table) + 1), "product_id": table["product_id"],
                        "Gender": "all", "ProductType": table["category"], "Colour": "-",
                        "Image": table["image"]})
    folder.mkdir(parents=True, exist_ok=True)
    out.to_csv(folder / "store-main.csv", index=False)
    return folder / "store-main.csv"


#: the clothing dataset's labels that say no type
UNLABELLED = ("Not sure", "Skip", "Other")


def _clothing(source: Path, folder: Path) -> Path:
    """The clothing dataset (``images.csv``: image, sender_id, label, kids) in the reference
    recipe's columns: numeric ids, ``ProductType`` its label, one ``Gender`` and a constant
    ``Colour`` (not scored); rows without a type, or without their photo, left out."""
    table = pd.read_csv(source / "images.csv", dtype=str, keep_default_na=False)
    table = table[~table["label"].isin(UNLABELLED)]
    table = table[[(source / "images" / f"{name}.jpg").is_file() for name in table["image"]]]
    out = pd.DataFrame({"ProductId": range(1, len(table) + 1), "Gender": "all", "ProductType": table["label"].to_numpy(),
                        "Colour": "-", "Image": [f"{name}.jpg" for name in table["image"]]})
    folder.mkdir(parents=True, exist_ok=True)
    out.to_csv(folder / "clothing.csv", index=False)
    return folder / "clothing.csv"


def catalogues(tmp: Path, clothing: Path | None = None) -> dict[str, Catalogue]:
    fashion, fullres, store = DATA / "fashion-images", DATA / "fashion-images-fullres", DATA / "store-demos"
    pair = ("ProductType", "Colour")
    found = {
        "fashion-2906": Catalogue(fashion / "fashion.csv", fashion / "images", pair, "Gender"),
        "fullres-200": Catalogue(fullres / "fashion.csv", fullres / "images", pair, "Gender"),
        "store-demos": Catalogue(_store_main(tmp), store / "images", ("ProductType",), None),
        "store-demos-all": Catalogue(store / "catalog.csv", store / "images", ("category",), None,
                                     id_column="product_id", image_column="images", reference=False),
    }
    if clothing is not None:
        found["clothing-5k"] = Catalogue(_clothing(clothing, tmp), clothing / "images", ("ProductType",), None)
    return found


#: name -> (trim, resize, size, pooling); one factor at a time around the default
CANDIDATES: dict[str, tuple[bool, str, int, str]] = {
    "default": (True, "pad", 256, "grid2"),
    "previous": (False, "squash", 320, "grid2"),
    "no-trim": (False, "pad", 256, "grid2"),
    "squash": (True, "squash", 256, "grid2"),
    "224px": (True, "pad", 224, "grid2"),
    "320px": (True, "pad", 320, "grid2"),
    "gem": (True, "pad", 256, "gem"),
}


def describe_candidate(name: str) -> str:
    trim, resize, size, pooling = CANDIDATES[name]
    return f"{'trim + ' if trim else ''}{resize}, {size} px, {pooling}"


def model_work(name: str) -> float:
    """The model's work for a photo against the default's: it grows with the input's area."""
    return (CANDIDATES[name][2] / CANDIDATES["default"][2]) ** 2


def _timed(cmd: list[str]) -> tuple[float, float]:
    """Run a whole process; its wall seconds and CPU seconds (user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    done = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(HERE.parent)}, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def _cli_build(cat: Catalogue, out: Path, name: str) -> float:
    """``lookalike -q build`` as a whole process (what the build target times); its wall seconds."""
    return _timed_candidate(cat, out, name)[0]


def speed(names: list[str], tmp: Path, rounds: int = 3) -> dict[str, Any]:
    """Build speed on fullres-200, the build target's catalogue, each build a whole process: per
    round the reference, every candidate, the reference again; a candidate's ratio is the mean of
    the two reference builds around it over its own (so a change of load mid-round shows)."""
    cat = catalogues(tmp)["fullres-200"]
    ref_cmd = [sys.executable, str(HERE / "reference_recipe.py"), "build", str(cat.csv), str(cat.images),
               str(tmp / "speed-reference")]
    out: dict[str, Any] = {"rounds": [], "loadavg_before": round(os.getloadavg()[0], 1)}
    for r in range(rounds):
        before = _timed(ref_cmd)
        builds = {n: _timed_candidate(cat, tmp / f"speed-{n}-{r}", n) for n in names}
        after = _timed(ref_cmd)
        ref_wall = (before[0] + after[0]) / 2
        out["rounds"].append({"reference_wall_s": [round(before[0], 2), round(after[0], 2)],
                              "reference_cpu_s": [round(before[1], 2), round(after[1], 2)],
                              "candidates": {n: {"wall_s": round(w, 2), "cpu_s": round(c, 2),
                                                 "ratio": round(ref_wall / w, 2)} for n, (w, c) in builds.items()},
                              "loadavg": round(os.getloadavg()[0], 1)})
        print(f"speed round {r + 1}: reference {before[0]:.1f} / {after[0]:.1f} s; "
              + ", ".join(f"{n} {w:.1f} s" for n, (w, _) in builds.items()), flush=True)
    return out


def _timed_candidate(cat: Catalogue, out: Path, name: str) -> tuple[float, float]:
    trim, resize, size, pooling = CANDIDATES[name]
    return _timed([sys.executable, "-m", "lookalike", "-q", "build", str(cat.csv), "--images", str(cat.images),
                   "--out", str(out), "--resize", resize, "--size", str(size), "--pooling", pooling,
                   "--trim" if trim else "--no-trim"])


def _scores(rec: Recommender, cat: Catalogue) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, Any]]]:
    """P@5 by colour weight, and each query's P@5 (by id) for the paired comparisons."""
    out, per_query = {}, {}
    for w in WEIGHTS:
        s = evaluate(rec, list(cat.labels), same=cat.same or (), colour_weight=w, group_by=[rec.id_column],
                     show_progress_bar=False)
        keys = {"p@5 type": f"p@5_{cat.labels[0]}", **({"p@5 type+colour": f"p@5_{ALL}"} if len(cat.labels) > 1 else {})}
        out[str(w)] = {m: round(s[k], 4) for m, k in keys.items()}
        queries = s["groups"][rec.id_column]
        per_query[str(w)] = {m: pd.Series({q: v[k] for q, v in queries.items()}) for m, k in keys.items()}
    return out, per_query


def paired(results: dict[str, Any], per_query: dict[str, Any]) -> None:
    """Each candidate's difference from the default and from the previous default, with its paired
    standard error (the same queries on both sides: much less noisy than either's own)."""
    for c in results["candidates"]:
        for key, entry in c["catalogues"].items():
            entry["paired"] = {}
            for w, metrics in per_query[c["name"]][key].items():
                entry["paired"][w] = {}
                for m, mine in metrics.items():
                    row = {}
                    for other in ("default", "previous"):
                        d = mine - per_query[other][key][w][m].reindex(mine.index)
                        row[f"vs_{other}"] = [round(float(d.mean()), 4), round(float(d.std() / math.sqrt(len(d))), 4)]
                    entry["paired"][w][m] = row


def run_candidate(name: str, cats: dict[str, Catalogue], tmp: Path,
                  per_query: dict[str, Any]) -> dict[str, Any]:
    trim, resize, size, pooling = CANDIDATES[name]
    found: dict[str, Any] = {"name": name, "input": describe_candidate(name), "model_work": model_work(name),
                             "catalogues": {}}
    for key, cat in cats.items():
        idx = tmp / f"{name}-{key}"
        if key == "fullres-200":
            seconds = _cli_build(cat, idx, name)
        else:
            t = time.perf_counter()
            build(cat.csv, idx, images=cat.images, id_column=cat.id_column, image_column=cat.image_column,
                  trim=trim, resize=resize, size=size, pooling=pooling, show_progress_bar=False)
            seconds = time.perf_counter() - t
        rec = Recommender.load(idx)
        scores, per_query.setdefault(name, {})[key] = _scores(rec, cat)
        entry = {"build_s": round(seconds, 1), "queries": len(rec.main_rows), "loadavg": round(os.getloadavg()[0], 1),
                 "runtime": rec.manifest["model"].get("runtime", ""), "weights": scores}
        found["catalogues"][key] = entry
        s = entry["weights"][HEADLINE]
        print(f"{name:9} {key:16} build {seconds:6.1f} s  P@5 w=0.15 type {s['p@5 type']:.3f}"
              + (f" type+colour {s['p@5 type+colour']:.3f}" if "p@5 type+colour" in s else ""), flush=True)
    return found


def run_reference(key: str, cat: Catalogue, tmp: Path) -> dict[str, Any]:
    """The reference recipe's build as a whole process, then its own evaluation."""
    import reference_recipe  # benchmarks/ is the script's folder; imports torch

    out = tmp / f"reference-{key}"
    t = time.perf_counter()
    subprocess.run([sys.executable, str(HERE / "reference_recipe.py"), "build", str(cat.csv), str(cat.images),
                    str(out)], check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t
    ids, features = reference_recipe.load(out)
    s = reference_recipe.evaluate_p_at_k(cat.csv, cat.images, ids, features, k=5)
    row = {"p@5 type": round(s["p_at_5_ProductType"], 4)}
    if cat.labels[1:] == ("Colour",):
        row["p@5 type+colour"] = round(s["p_at_5_ProductType_and_Colour"], 4)
    for f in out.iterdir():  # 245 KiB a product
        f.unlink()
    print(f"reference {key:16} build {seconds:6.1f} s  P@5 type {row['p@5 type']:.3f}"
          + (f" type+colour {row['p@5 type+colour']:.3f}" if "p@5 type+colour" in row else ""), flush=True)
    return {"build_s": round(seconds, 1), "queries": int(s["n_queries"]), "loadavg": round(os.getloadavg()[0], 1),
            "scores": row}


def backgrounds(cats: dict[str, Catalogue], sample: int = 300) -> dict[str, dict[str, float]]:
    """How uniform each catalogue's backgrounds are, by trimming's own rule (pixels within
    ``BACKGROUND_TOLERANCE`` of the border's median), on up to ``sample`` photos (seeded): the
    share whose border is at least ``UNIFORM`` background, and the share trimming cuts."""
    out = {}
    for key, cat in cats.items():
        table = pd.read_csv(cat.csv, dtype=str, keep_default_na=False)
        photos = [p for cell in table[cat.image_column] for p in cell.split("|") if p]
        rng = np.random.default_rng(0)
        chosen = [photos[i] for i in sorted(rng.choice(len(photos), min(sample, len(photos)), replace=False))]
        uniform = cut = 0
        for name in chosen:
            img = open_image(cat.images / name, draft=256)
            rgb = np.asarray(img, dtype=np.int16)
            border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
            near = (np.abs(border - np.median(border, axis=0)) <= BACKGROUND_TOLERANCE).all(axis=1)
            uniform += bool(near.mean() >= UNIFORM)
            cut += trim_background(img).size != img.size
        out[key] = {"photos": len(chosen), "uniform": round(uniform / len(chosen), 3),
                    "trimmed": round(cut / len(chosen), 3)}
    return out


def run(names: list[str], keys: list[str], tmp: Path, clothing: Path | None = None) -> dict[str, Any]:
    cats = {k: c for k, c in catalogues(tmp, clothing).items() if k in keys}
    if missing := sorted(set(keys) - set(cats)):
        sys.exit(f"no such catalogue: {', '.join(missing)} (clothing-5k needs --clothing DIR)")
    reference = {}
    if "fullres-200" in cats:  # first, so the fullres builds below sit next to it in time
        reference["fullres-200"] = run_reference("fullres-200", cats["fullres-200"], tmp)
    per_query: dict[str, Any] = {}
    found = [run_candidate(name, cats, tmp, per_query) for name in names]
    for key, cat in cats.items():
        if cat.reference and key not in reference:
            reference[key] = run_reference(key, cat, tmp)
    command = "python benchmarks/defaults_study.py " + " ".join(sys.argv[1:])
    results = {"machine": describe(), "command": command, "weights": list(WEIGHTS), "candidates": found,
               "reference": reference}
    paired(results, per_query)
    results["backgrounds"] = backgrounds(cats)
    if "fullres-200" in cats:
        results["speed"] = speed(names, tmp)
    return results


def _headline(results: dict[str, Any], who: str, key: str) -> dict[str, float] | None:
    """P@5 at the default colour weight (the reference has no colour weight)."""
    if who == "reference":
        ref = results["reference"].get(key)
        return None if ref is None else ref["scores"]
    cand = next(c for c in results["candidates"] if c["name"] == who)
    return cand["catalogues"][key]["weights"][HEADLINE]


def _noise(p: float, queries: int) -> float:
    """An upper bound on P@5's standard error over ``queries`` (a query's P@5 varies at most as a coin)."""
    return math.sqrt(p * (1 - p) / max(queries, 1))


def losses(results: dict[str, Any], who: str, against: str) -> list[tuple[str, str, float, float]]:
    """(catalogue, metric, how much lower, its standard error) wherever ``who`` scores below
    ``against`` at 0.15: the paired error between two lookalike settings, the bound against the reference."""
    out = []
    for key in results["candidates"][0]["catalogues"]:
        mine, theirs = _headline(results, who, key), _headline(results, against, key)
        if mine is None or theirs is None:
            continue
        for m in theirs:
            if m not in mine or mine[m] >= theirs[m]:
                continue
            if against == "reference":
                n = results["candidates"][0]["catalogues"][key]["queries"]
                se = _noise(mine[m], n)
            else:  # the pairs kept are each candidate against the default and the previous default
                a, b = (who, against) if against in ("default", "previous") else (against, who)
                cand = next(c for c in results["candidates"] if c["name"] == a)
                se = cand["catalogues"][key]["paired"][HEADLINE][m][f"vs_{b}"][1]
            out.append((key, m, round(mine[m] - theirs[m], 4), se))
    return out


def _catalogue_table(results: dict[str, Any], key: str) -> list[str]:
    default = results["candidates"][0]["catalogues"][key]
    pair = "p@5 type+colour" in default["weights"][HEADLINE]
    head = "| candidate | input | model work | type (w 0) |" + (" type+colour (w 0) |" if pair else "") + \
        " type (w 0.15) |" + (" type+colour (w 0.15) |" if pair else "")
    rows = [head, "|---|---|---:|" + "---:|" * (4 if pair else 2)]
    for c in results["candidates"]:
        e = c["catalogues"][key]
        cells = [f"{e['weights'][w][m]:.3f}" for w in ("0.0", HEADLINE)
                 for m in (("p@5 type", "p@5 type+colour") if pair else ("p@5 type",))]
        mark = "**" if c["name"] == "default" else ""
        rows.append(f"| {mark}{c['name']}{mark} | {c['input']} | {c['model_work']:.0%} | " + " | ".join(cells) + " |")
    ref = results["reference"].get(key)
    if ref:
        s = ref["scores"]
        cells = [f"{s['p@5 type']:.3f}"] + ([f"{s['p@5 type+colour']:.3f}"] if pair else [])
        rows.append("| reference recipe | squash, 224 px, unpooled 62,720-d, Euclidean | | "
                    + " | ".join(cells * 2) + " |")
    p = default["weights"][HEADLINE]["p@5 type"]
    rows += ["", "(The reference has no colour descriptor: its figures are the same at either weight.) "
                 f"{default['queries']} queries: one hit of one query is {1 / (5 * default['queries']):.4f} of "
                 f"P@5; a P@5 near {p:.2f} has a standard error of at most ±{_noise(p, default['queries']):.3f} "
                 "(differences between candidates, on the same queries, are less noisy than that)."]
    return rows


def _speed_rows(results: dict[str, Any]) -> list[str]:
    """Contention only slows a build: each side's fastest round is its best estimate, and CPU
    seconds (what the build burns, whatever the load) are the check on it."""
    sp = results.get("speed")
    if not sp:
        return []
    ref_walls = [w for r in sp["rounds"] for w in r["reference_wall_s"]]
    ref_cpu = sum(c for r in sp["rounds"] for c in r["reference_cpu_s"]) / len(ref_walls)
    rows = ["| candidate | model work | wall s (each round) | CPU s (each round) | reference / lookalike, "
            "fastest of each | by CPU s |", "|---|---:|---:|---:|---:|---:|"]
    ratio, by_cpu = {}, {}
    for c in results["candidates"]:
        runs = [r["candidates"][c["name"]] for r in sp["rounds"]]
        ratio[c["name"]] = min(ref_walls) / min(x["wall_s"] for x in runs)
        by_cpu[c["name"]] = ref_cpu / (sum(x["cpu_s"] for x in runs) / len(runs))
        rows.append(f"| {c['name']} | {c['model_work']:.0%} | {', '.join(str(x['wall_s']) for x in runs)} | "
                    f"{', '.join(str(x['cpu_s']) for x in runs)} | {ratio[c['name']]:.2f}x | {by_cpu[c['name']]:.2f}x |")
    short = [n for n in ratio if ratio[n] < 5 and by_cpu[n] < 5]
    wall_only = [n for n in ratio if ratio[n] < 5 <= by_cpu[n]]
    verdict = ("Every candidate builds at least 5x faster than the reference here by CPU seconds" if not short
               else "Below 5x here by both measures: " + ", ".join(f"`{n}` ({ratio[n]:.2f}x)" for n in short))
    verdict += ("" if not wall_only else ", and by wall time all but " + ", ".join(
        f"`{n}` ({ratio[n]:.2f}x; {by_cpu[n]:.2f}x by CPU: contention)" for n in wall_only))
    return [f"Build speed on `fullres-200` (the build target's catalogue), each build a whole process, "
            f"{len(sp['rounds'])} rounds of: the reference, every candidate, the reference again. The reference's "
            f"builds took {', '.join(str(w) for w in ref_walls)} s: the other sessions' load moves wall times by "
            "2x, so each side's fastest build is compared, and CPU seconds (the reference's mean "
            f"{ref_cpu:.1f} s) check it. Load average {sp['loadavg_before']} before. "
            + (f"Measured by `{results['speed_command']}`." if results.get("speed_command") else ""), "",
            *rows, "",
            f"{verdict}. This native AVX-512 machine is not the target's AVX2-only CPU, where the model is a larger "
            "share of a build (docs/benchmarks.md: the default 5.87x under emulation, alternating rounds); there a "
            "candidate's model work above 100% comes off that margin: at 156% the AVX2 ratio would fall between "
            "5.87x / 1.56 = 3.8x (a build all model) and 5.87x, most likely below 5x (the model is most of an "
            "AVX2 build there), so neither 320 px candidate is an option for the default.", ""]


def _fmt(results: dict[str, Any], found: list[tuple[str, str, float, float]], gain: bool = False) -> str:
    """Each loss (``gain``: the other side's gain) with what it is in hits (of the catalogue's
    5 x queries) and against its noise."""
    out = []
    for k, m, d, se in found:
        n = results["candidates"][0]["catalogues"][k]["queries"]
        noise = "within noise" if -d < 2 * se else "beyond noise"
        out.append(f"{k} {m.removeprefix('p@5 ')} {-d if gain else d:+.3f} ({round(-d * 5 * n)} of {5 * n} hits; "
                   f"standard error {se:.3f}, {noise})")
    return ", ".join(out)


def _short(found: list[tuple[str, str, float, float]]) -> str:
    """Losses for a table cell: beyond two standard errors in bold."""
    cells = []
    for k, m, d, se in found:
        text = f"{k} {m.removeprefix('p@5 ')} {d:+.3f} ±{se:.3f}"
        cells.append(f"**{text}**" if -d >= 2 * se else text)
    return "; ".join(cells) or "nowhere"


def _loss_table(results: dict[str, Any]) -> list[str]:
    rows = ["Where each setting scores below the previous default, the reference recipe and the default (P@5 at "
            "colour weight 0.15; ± one standard error: paired, the same queries on both sides, between two "
            "lookalike settings; the unpaired bound against the reference; **bold**: beyond two):", "",
            "| candidate | below the previous default | below the reference | below the default |", "|---|---|---|---|"]
    for c in results["candidates"]:
        n = c["name"]
        cells = ["—" if n == other else _short(losses(results, n, other)) for other in ("previous", "reference")]
        cells.append("—" if n == "default" else _short(losses(results, n, "default")))
        rows.append(f"| {n} | " + " | ".join(cells) + " |")
    return rows + [""]


def _beyond(found: list[tuple[str, str, float, float]]) -> list[tuple[str, str, float, float]]:
    return [x for x in found if -x[2] >= 2 * x[3]]


def verdict(results: dict[str, Any]) -> str:
    """What the numbers say, at the default colour weight: does the default lose to the previous
    default or the reference anywhere, beyond noise; does any setting win everywhere."""
    names = [c["name"] for c in results["candidates"]]
    lost = {n: losses(results, n, "previous") + losses(results, n, "reference") for n in names}
    mine = lost["default"]
    if not mine:
        parts = ["**The default loses to neither the previous default nor the reference recipe on any catalogue** "
                 "(P@5 at colour weight 0.15)."]
    else:
        parts = [f"**The default scores below the previous default or the reference on** {_fmt(results, mine)}; "
                 + ("each of these is within two standard errors (noise)." if not _beyond(mine) else
                    f"beyond noise: {len(_beyond(mine))} of them.")]
    everywhere = [n for n in names[1:] if not lost[n] and not losses(results, n, "default")]
    if everywhere:
        parts.append("Settings that score at least the default's, the previous default's and the reference's "
                     "everywhere: " + ", ".join(f"`{n}` ({model_work(n):.0%} of the default's model work)"
                                                for n in everywhere) + ".")
    else:
        parts.append("No other setting scores at least the default's, the previous default's and the reference's "
                     "on every catalogue (table above).")
    gains = {n: g for n in everywhere if (g := losses(results, "default", n))}  # where the default scores below
    if gains:
        parts.append("Where they score above the default: " + "; ".join(
            f"`{n}` on {_fmt(results, g, gain=True)}" for n, g in gains.items()) + ".")
    if _beyond(mine) and not everywhere:
        parts.append("The default loses beyond noise and no single setting wins everywhere: the numbers call "
                     "for an input chosen per catalogue.")
    elif any(_beyond(g) for g in gains.values()):
        parts.append("A setting beats the default beyond noise and loses nowhere: the numbers call for it as "
                     "the default, if its build speed holds (table above).")
    else:
        parts.append("No setting beats the default beyond noise without losing somewhere, and the default loses "
                     "nowhere beyond noise: the numbers call for no change and for no input chosen per catalogue; "
                     "the defaults stay.")
    return " ".join(parts)


def section(results: dict[str, Any]) -> str:
    m = results["machine"]
    keys = list(results["candidates"][0]["catalogues"])
    clothing = ("; and `clothing-5k` (5,000 photos of clothes that 32 people took at home, on floors, beds and "
                "hangers, most 400x533 px, from github.com/alexeygrigorev/clothing-dataset (CC0), unseen by the "
                "project: relevance same label, 17 types)") if "clothing-5k" in keys else ""
    merged = [f"`{x['command']}` ({x['machine'].get('cpu', '?')}, {x['machine'].get('cores', '?')} cores)"
              for x in results.get("merged", [])]
    lines = [
        SECTION, "",
        "Every labelled catalogue we have, each product a query, top 5, duplicates collapsed: `fashion-2906` "
        "(the reference catalogue, relevance same ProductType / ProductType and Colour, of the query's Gender), "
        "`fullres-200` (200 of the same kind at 360x480 to 1800x2400, the same labels; small), `store-demos` "
        "(25 shop-demo products, electronics and dresses, by their main photo, relevance same category; tiny) "
        "and `store-demos-all` (the same with all 97 photos, best-photo scoring; lookalike only: the reference "
        f"takes one photo a product){clothing}. Candidates: the default, the previous default and one factor at "
        "a time around the default; each at colour weight 0 and 0.15 (query time). Model work is the model's per "
        "photo against the default's (input area); trimming costs decode-side CPU, not model work. "
        "Generated by:", "",
        "```bash", results["command"], "```", "",
        *([f"and with catalogues added by {', '.join(merged)}.", ""] if merged else []),
        "(`--from-json --doc docs/quality.md` rewrites this section from the JSON, measuring the photos' "
        "backgrounds if it lacks them; `--from-json --speed` measures build speed again.)", "",
        f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores (kernel flags "
        f"{' '.join(m.get('kernel_flags', []))}), shared with other sessions.", "",
    ]
    bg = results.get("backgrounds", {})
    for key in results["candidates"][0]["catalogues"]:
        b = bg.get(key)
        about = (f" ({b['uniform']:.0%} of {b['photos']} photos on a uniform background, {b['trimmed']:.0%} cut "
                 "by trimming)") if b else ""
        lines += [f"**{key}**{about}", "", *_catalogue_table(results, key), ""]
    lines += _loss_table(results)
    lines += _speed_rows(results)
    lines += [verdict(results), "", _by_background(results), ""]
    return "\n".join(lines)


def _by_background(results: dict[str, Any]) -> str:
    """What trimming chosen per catalogue from its backgrounds would do on these catalogues."""
    bg = results.get("backgrounds", {})
    if not bg:
        return ""
    plain = {k: b for k, b in bg.items() if b["uniform"] < 0.9}
    lowest = min(bg, key=lambda k: bg[k]["uniform"])
    if not plain:
        return (f"Trimming chosen per catalogue from a sample of its backgrounds (trim where at least 90% of the "
                f"photos have a uniform one) would trim every catalogue here (the least uniform, {lowest}, has "
                f"{bg[lowest]['uniform']:.0%}), as the default does: it would change no figure above, so it is "
                "not built.")
    return ("Trimming chosen per catalogue from a sample of its backgrounds (trim where at least 90% of the photos "
            "have a uniform one) would not trim " + ", ".join(f"{k} ({b['uniform']:.0%})" for k, b in plain.items())
            + ": compare the `no-trim` rows there.")


def write_doc(doc: Path, text: str) -> None:
    put_section(doc, SECTION, text, before=None)


def merge(results: dict[str, Any], added: dict[str, Any]) -> None:
    """Put ``added``'s catalogues (its own run, the same candidates) into ``results``."""
    mine = {c["name"]: c for c in results["candidates"]}
    if set(mine) != {c["name"] for c in added["candidates"]}:
        sys.exit("--merge needs the same --candidates as the results in --out")
    for c in added["candidates"]:
        mine[c["name"]]["catalogues"].update(c["catalogues"])
    results["reference"].update(added["reference"])
    results.setdefault("backgrounds", {}).update(added["backgrounds"])
    results.setdefault("merged", []).append({"command": added["command"], "machine": added["machine"],
                                             "catalogues": list(added["candidates"][0]["catalogues"])})


def _complete(results: dict[str, Any], names: list[str], measure_speed: bool, clothing: Path | None) -> bool:
    """Add to results read back what needs no index: the photos' backgrounds where missing, and
    with ``measure_speed`` the build speed again (its own command recorded). Whether it changed."""
    changed = False
    with tempfile.TemporaryDirectory() as tmp:
        if "backgrounds" not in results:
            results["backgrounds"] = backgrounds({k: c for k, c in catalogues(Path(tmp), clothing).items()
                                                  if k in results["candidates"][0]["catalogues"]})
            changed = True
        if measure_speed:
            print_machine()
            results["speed"] = speed(names, Path(tmp))
            results["speed_command"] = "python benchmarks/defaults_study.py " + " ".join(sys.argv[1:])
            changed = True
    return changed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--catalogues", default="fashion-2906,fullres-200,store-demos,store-demos-all")
    ap.add_argument("--clothing", type=Path, help="a clone of github.com/alexeygrigorev/clothing-dataset: "
                    "adds the catalogue clothing-5k")
    ap.add_argument("--merge", action="store_true",
                    help="run only --catalogues and add them to the results already in --out")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/defaults.json"))
    ap.add_argument("--doc", type=Path)
    ap.add_argument("--speed", action="store_true", help="with --from-json: measure build speed again into --out")
    ap.add_argument("--from-json", action="store_true",
                    help="only write --doc from --out (measuring the backgrounds if --out lacks them)")
    args = ap.parse_args()
    names = args.candidates.split(",")
    if names[0] != "default" or "previous" not in names:
        ap.error("--candidates must start with default and include previous (the verdict compares them)")
    if args.from_json:
        results = json.loads(args.out.read_text())
        if _complete(results, names, args.speed, args.clothing):
            args.out.write_text(json.dumps(results, indent=1))
    else:
        print_machine()
        with tempfile.TemporaryDirectory() as tmp:
            found = run(names, args.catalogues.split(","), Path(tmp), args.clothing)
        if args.merge:
            results = json.loads(args.out.read_text())
            merge(results, found)
        else:
            results = found
        args.out.write_text(json.dumps(results, indent=1))
    if args.doc:
        write_doc(args.doc, section(results))
    print(verdict(results))


if __name__ == "__main__":
    main()
