"""Where the near-duplicate thresholds come from: every candidate pair of an index, measured.

For each pair of products that passes the hash and embedding tests of
``lookalike.writing.duplicates`` (``candidate_pairs``: difference hashes within ``NEAR_HAMMING`` bits,
embedding cosine >= ``NEAR_COSINE``), print the colour-descriptor cosine, whether the photos are
byte-identical, and, with ``--label``, whether the catalogue gives both the same value. A
gap in colour cosine between re-encodings and colour variants is what ``NEAR_COLOUR`` sits in.

    lookalike build ../shared/datasets/fashion-images/fashion.csv --out /tmp/fashion-index
    python benchmarks/duplicate_study.py /tmp/fashion-index --label Colour
"""

from __future__ import annotations

import argparse

import numpy as np
from machine import print_machine  # benchmarks/ is the script's folder

from lookalike import Recommender
from lookalike.writing.duplicates import NEAR_COLOUR, NEAR_COSINE, NEAR_HAMMING, candidate_pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("index")
    ap.add_argument("--label", default=None, help="a metadata column to compare within each pair")
    ap.add_argument("--show", type=int, default=12, help="how many lowest-colour pairs to list")
    args = ap.parse_args()
    print_machine()
    rec = Recommender.load(args.index)
    meta = rec.metadata
    ids = meta[rec.manifest["catalog"]["id_column"]].to_numpy()
    shape = np.asarray(rec.vectors, dtype=np.float32)
    colour = rec.colour
    hashes = meta["_dhash"].to_numpy().astype(np.uint64)
    sha = meta["_sha1"].to_numpy()
    pairs = []
    for i, j in candidate_pairs(hashes, shape):
        same_label = "" if args.label is None else str(meta[args.label].iat[i] == meta[args.label].iat[j])
        pairs.append((float(colour[i] @ colour[j]), sha[i] == sha[j], ids[i], ids[j], same_label))
    pairs.sort()
    other = [p for p in pairs if not p[1]]
    print(f"{len(pairs)} pairs pass hash <= {NEAR_HAMMING} bits and cosine >= {NEAR_COSINE}; "
          f"{len(pairs) - len(other)} are byte-identical")
    below = [p for p in other if p[0] < NEAR_COLOUR]
    print(f"{len(below)} of the other {len(other)} have colour cosine < {NEAR_COLOUR} (kept apart)")
    if args.label:
        differ = [p for p in other if p[4] == "False"]
        print(f"{len(differ)} of those {len(other)} have different {args.label}, at colour cosine "
              + ", ".join(f"{p[0]:.3f}" for p in differ))
    print(f"\nlowest colour cosines among pairs that are not byte-identical:\ncolour  ids  same {args.label or ''}")
    for c, _, a, b, lab in other[: args.show]:
        print(f"{c:.3f}  {a} {b}  {lab}")


if __name__ == "__main__":
    main()
