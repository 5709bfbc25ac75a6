"""Thumbnails of one huge photo at many sizes, against ``lookalike serve`` on loopback.

Writes a 62-megapixel JPEG (9120x6840; ``--png``: a PNG, which has no draft decoding) into a temporary catalogue with two demo products,
builds it, starts ``python -m lookalike serve`` on 127.0.0.1 and sends 8 concurrent
``GET /products/{id}/image?size=N`` for 8 different N, then the same 8 again (cache hits).
Reports the wall time of each round and the peak resident memory of the server's
processes over its baseline. Issue 9 measured 16 s and 3.6 GB for the first round.

Usage::

    python benchmarks/bench_thumbnails.py [--png]
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

from bench_hostile_uploads import Sampler, cpu, free_port, request, start_server, stop_server, tree_rss_mb  # noqa: E402

SIZES = (60, 100, 200, 300, 500, 700, 900, 1024)


def main() -> None:
    from hostile import png

    from lookalike import build, demo_catalog

    as_png = "--png" in sys.argv[1:]
    huge = "huge.png" if as_png else "huge.jpg"

    info = cpu()
    print(f"CPU: {info.get('Model name', '?')} ({info.get('CPU(s)', '?')} CPUs)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        table = pd.read_csv(demo_catalog(), dtype=str, keep_default_na=False).head(3)
        (folder / "images").mkdir()
        for name in table["Image"].iloc[1:]:
            shutil.copy(demo_catalog().parent / "images" / name, folder / "images" / name)
        if as_png:
            (folder / "images" / huge).write_bytes(png(9120, 6840))
        else:
            small = Image.open(demo_catalog().parent / "images" / table["Image"].iat[0]).convert("RGB")
            small.resize((9120, 6840), Image.BICUBIC).save(folder / "images" / huge, quality=90)
        table.loc[table.index[0], "Image"] = huge
        table.to_csv(folder / "c.csv", index=False)
        build(folder / "c.csv", folder / "index", show_progress_bar=False)
        pid = table["ProductId"].iat[0]
        port = free_port()
        proc = start_server(folder / "index", port, [])
        try:
            base = tree_rss_mb(proc.pid)
            sampler = Sampler(proc.pid)
            sampler.start()
            rounds = []
            for _ in range(2):
                statuses: list[int] = []

                def get(size: int, statuses: list[int] = statuses) -> None:
                    statuses.append(request(port, "GET", f"/products/{pid}/image?size={size}")[0])

                threads = [threading.Thread(target=get, args=(s,)) for s in SIZES]
                t0 = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(timeout=120)
                rounds.append({"seconds": round(time.perf_counter() - t0, 2), "status": sorted(statuses)})
            time.sleep(2.0)
            sampler.stop.set()
            sampler.join()
            after = tree_rss_mb(proc.pid)
        finally:
            stop_server(proc)
    result = {"cpu": info.get("Model name"), "photo": f"{huge}, 62.4 MP", "sizes": SIZES, "rounds": rounds,
              "rss_mb": {"baseline": round(base), "peak": round(sampler.peak), "growth": round(sampler.peak - base),
                         "after_minus_baseline": round(after - base)}}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
