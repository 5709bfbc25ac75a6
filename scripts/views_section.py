"""Write docs/quality.md's "Other views (issue 20)" section from benchmarks/results/views.json,
so that no figure in it is typed: run ``benchmarks/views_study.py ... --out
benchmarks/results/views.json`` (the command in the section), then ``python scripts/views_section.py``
from the repository root."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import views_study  # noqa: E402 - benchmarks/ is on the path now

d = json.loads((ROOT / "benchmarks" / "results" / "views.json").read_text())
m = d["machine"]
res = {r["colour_weight"]: r for r in d["results"]}
a = {line["name"]: line for line in res[0.15]["overall"]}
z = {line["name"]: line for line in res[0.0]["overall"]}
BEST, MEAN, OLD = "best photo, every photo indexed", "mean of photos, every photo indexed", "main photos only indexed (before issue 20)"
BEST_OTHERS, MEAN_OTHERS = BEST + ": non-main queries", MEAN + ": non-main queries"


def tables(r):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        views_study._print(r)
    return buf.getvalue().strip()
w15, w0 = res[0.15], res[0.0]
fw = w15["first_wrong"]
n = a[BEST]["queries"]
def q(x, line):
    return round(x * line["queries"])
text = f"""
## Other views (issue 20)

A product may have several photos, and a photo that asks for it (a shopper's, another view) is
often not the main one. Every photo
of each product with two or more is used as a query while it (and any byte-identical photo) is
left out of the index; its stored vector is the query (the vector is the photo's embedding).
R@k is the share of queries whose own product is among the top k products. store-demos
(`../shared/datasets/store-demos`: {d['products']} products, {d['photos']} photos, 1–7 per
product) gives {n} queries from {w15['settings']['products']} products (its two Monitors have one
photo each, so 11 of its 12 categories are measured). Defaults: EfficientNet-Lite0 int8 on ONNX
Runtime, grid2, PCA to 96-d (the index has 97 rows), colour weight 0.15, duplicates collapsed
(store-demos has none), exact back end.

```bash
lookalike build ../shared/datasets/store-demos/catalog.csv --images ../shared/datasets/store-demos/images \\
    --id-column product_id --image-column images --out /tmp/store-views
lookalike evaluate /tmp/store-views --views --by category                   # (a) the default
lookalike evaluate /tmp/store-views --views --by category --scoring mean    # (c)
python benchmarks/views_study.py /tmp/store-views --group-by category --colour-weights 0.15,0 \\
    --out benchmarks/results/views.json                                      # (a), (b), (c) and the tables below
python scripts/views_section.py                                             # this section, from views.json
```
Machine: {m['cpu']}, {m['cores']} cores (kernel flags {' '.join(m['kernel_flags'])}), Python {m['python']},
numpy {m['numpy']} ({m['blas'][0]}), onnxruntime {m['onnxruntime'].split()[0]}; the figures are
counts of queries, not timings, so the machine's load does not move them (its ONNX kernels could
move a score in the last digits). `tests/test_views.py` checks the counts, the groups and the leaving out.

**At the defaults (colour weight 0.15):** with every photo indexed and a product scored by its
best photo (a), another photo finds its product first {a[BEST]['r@1']:.1%} of the time and in the top 5
{a[BEST]['r@5']:.1%}. With only each product's main photo indexed, as before issue 20 (b), the
{a[OLD]['queries']} non-main photos found their product first {a[OLD]['r@1']:.1%} of the time (the issue's
30–57%), in the top 5 {a[OLD]['r@5']:.1%}. On those same {a[BEST_OTHERS]['queries']} queries (a) gives
{a[BEST_OTHERS]['r@1']:.1%} / {a[BEST_OTHERS]['r@5']:.1%}: indexing the other photos puts the product first more often,
but in the top 5 *less* often. Scored by its best photo, a product of many photos has many
chances: where the query's product was not first, the product that was has
{fw['best']['mean_photos']:.2f} photos on average (the catalogue: {fw['best']['catalogue_mean_photos']:.2f}).
Scoring by the mean of the product's photos (c) removes that pull ({fw['mean']['mean_photos']:.2f}
photos) and gives {a[MEAN]['r@1']:.1%} / {a[MEAN]['r@5']:.1%} ({a[MEAN_OTHERS]['r@1']:.1%} / {a[MEAN_OTHERS]['r@5']:.1%} on the
non-main queries).

**Shape only (colour weight 0)** the order of (a) and (c) turns: (a) {z[BEST]['r@1']:.1%} / {z[BEST]['r@5']:.1%},
(c) {z[MEAN]['r@1']:.1%} / {z[MEAN]['r@5']:.1%}, (b) {z[OLD]['r@1']:.1%} / {z[OLD]['r@5']:.1%}.

So `scoring="mean"` (`lookalike evaluate --views --scoring mean`,
`Recommender.similar_to_rows(..., scoring="mean")`) measures better at the defaults: R@1
{q(a[MEAN]['r@1'], a[MEAN]) - q(a[BEST]['r@1'], a[BEST]):+d} queries, R@5 {q(a[MEAN]['r@5'], a[MEAN]) - q(a[BEST]['r@5'], a[BEST]):+d}
of {n}, and is kept as an option of the evaluation; it is not an option of `similar` or the
service, and not the default: the gain is a handful of queries on 23 products, and at colour
weight 0 it is {q(z[MEAN]['r@1'], z[MEAN]) - q(z[BEST]['r@1'], z[BEST]):+d} / {q(z[MEAN]['r@5'], z[MEAN]) - q(z[BEST]['r@5'], z[BEST]):+d}.
A larger catalogue of several photos per product should decide that. The mean is exact: a
product's mean is at most its best photo's score, so candidates are fetched by best photo until
the k-th mean beats the last candidate's best (`tests/test_views.py` checks it against brute force).

The study's tables (per category: a category's queries are its products' photos):

{tables(w15)}

{tables(w0)}
"""
p = ROOT / "docs" / "quality.md"
s = p.read_text()
marker = "\n## Other views (issue 20)\n"
if marker in s:
    s = s[: s.index(marker)]
p.write_text(s.rstrip("\n") + "\n" + text)
