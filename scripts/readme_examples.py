"""Make README.md's example outputs from the bundled sample, so they can't drift from the code.

Each example is a block of README.md between ``<!-- generated: NAME -->`` and
``<!-- /generated -->``: its commands as a ``bash`` code block, then what they print. This
script runs the commands of every example, in README order, in a scratch folder where
``lookalike/data/demo`` is the bundled sample (as in a checkout of the repository), through
``lookalike.cli.main`` in this process, and writes each block anew; ``--check`` only compares
and exits 1, naming the blocks that differ. The contact sheet that ``similar --sheet`` draws
is copied to ``docs/img/sheet-13683.png`` (not with ``--check``).

What varies from run to run is normalised, not invented (:func:`normalise`):

- a duration (``in 1.42 s``) reads ``in #.## s``;
- a time stamp reads ``YYYY-MM-DDThh:mm:ssZ``;
- the absolute path of the sample reads ``lookalike/data/demo``, that of the scratch folder ``.``;
- the size on disk (``info``) reads ``#.# MB (# bytes per product)``: its files hold the above.

The model runs on ONNX Runtime, the reference: the build is asked for it (``--runtime onnx``),
and photo queries and live changes of that index follow what its build asked for. OpenVINO's
vectors agree to a cosine of about 0.997, which moves scores in the third decimal and can swap
close ranks: a README made with the calibrated choice would be this machine's. For the same
reason the examples' indexes are built in float32 (``--precision fp32``): the default int8
model's kernels differ by CPU (with AVX-512 VNNI an int8 product is exact; AVX2's saturates),
which moved the README's scores by up to 0.007 and chose another of two near-equal photos of
one product. In float32 two CPUs agree to about 1e-6, so a printed score can still differ in
its last digit: ``--check`` takes two lines as equal when they differ only in numbers with
three or more decimals, each by at most :data:`TOLERANCE`.

Output goes to one stream (stdout and stderr interleaved as a terminal shows them), without
progress bars. Each command's exit status must be the one given here, or the script fails.

    python scripts/readme_examples.py            # rewrite README.md
    python scripts/readme_examples.py --check    # exit 1 when README.md differs
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's lookalike, whichever one is installed
README = ROOT / "README.md"
SHEET = ROOT / "docs" / "img" / "sheet-13683.png"
SAMPLE = "lookalike/data/demo"
#: ../shared/datasets/store-demos (25 real products, 97 photos), beside the checkout as CI has it
STORE = "store-demos"
STORE_DIR = ROOT.parent / "shared" / "datasets" / "store-demos"


@dataclass(frozen=True)
class Example:
    name: str
    commands: tuple[str, ...]  # as the README shows them, comments included
    exit_codes: tuple[int, ...]  # what each command must exit with


IMAGES = f"--images {SAMPLE}/images"
EXAMPLES = (
    Example("build", (f"lookalike build {SAMPLE}/catalog.csv {IMAGES} --out shop-index --runtime onnx --precision fp32",), (0,)),
    Example("similar", ("lookalike similar shop-index --id 13683 -k 5 --same Gender --sheet sheet.png",), (0,)),
    Example("photo", (f"lookalike similar shop-index --image {SAMPLE}/images/13683.jpg -k 3 --where Gender=Women",),
            (0,)),
    Example("export", ("lookalike export shop-index top5.csv -k 5 --same Gender     # the batch table a shop loads",
                       "head -3 top5.csv"), (0, 0)),
    Example("info", ("lookalike info shop-index",), (0,)),
    Example("duplicates", ("lookalike duplicates shop-index     # byte-identical or near-identical photos under "
                           "different ids",), (0,)),
    Example("changes", (
        f"lookalike add shop-index {SAMPLE}/changes.csv {IMAGES}    # new products, re-shot photos, new titles",
        "lookalike remove shop-index --id 31126 --id 99999999     # or --ids-file delisted.txt; exits 3: one refused",
        f"lookalike sync shop-index {SAMPLE}/today.csv {IMAGES}     # the nightly job: whatever changed",
        "lookalike compact shop-index                             # fold the changes into one segment",
    ), (0, 3, 0, 0)),
    Example("products", (
        f"lookalike build {STORE}/catalog.csv --images {STORE}/images --id-column product_id --image-column images "
        "--out store-index --runtime onnx --precision fp32",
        "lookalike similar store-index --id oc-31 -k 4 --columns name,category,price",
    ), (0, 0)),
    Example("steer", (
        "lookalike similar store-index --id ps-3 -k 4 --columns name,price --boost 'price<30:+0.05' "
        "--max-per category=2 --explain",
        "lookalike similar store-index --id ps-3 -k 4 --columns name,category --not ps-1 --diversity 0.2"
        "     # less like ps-1, and varied",
        "lookalike rules store-index pin --for ps-3 --show ps-1 --rank 2",
        "lookalike rules store-index block --hide ps-7              # never shown, for any query",
        "lookalike settings store-index --where 'price<50'           # a default every query applies",
        "lookalike similar store-index --id ps-3 -k 4 --columns name,price",
        f"lookalike similar store-index --image {STORE}/images/prestashop/image_9.jpg --box 0,0,1,0.5 -k 2 "
        "--columns name --no-defaults     # the top half of a photo",
    ), (0, 0, 0, 0, 0, 0, 0)),
)


def normalise(text: str, *, scratch: Path, sample: Path) -> str:
    """The output with what varies from run to run replaced (see the module's doc)."""
    for path, shown in ((sample, SAMPLE), (scratch, ".")):
        for form in {str(path), str(path.resolve())}:
            text = text.replace(form, shown)
    text = re.sub(r"\bin \d+(\.\d+)? s\b", "in #.## s", text)
    text = re.sub(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z?", "YYYY-MM-DDThh:mm:ssZ", text)
    return re.sub(r"^(size on disk +).*$", r"\1#.# MB (# bytes per product)", text, flags=re.M)


@contextlib.contextmanager
def _inside(folder: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


@contextlib.contextmanager
def _captured(out: io.StringIO) -> Iterator[None]:
    """stdout and stderr into ``out``, no progress bars, and the process's logging as it was."""
    import tqdm.auto

    class Silent(tqdm.auto.tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            super().__init__(*args, **{**kwargs, "disable": True})

    root, pkg = logging.getLogger(), logging.getLogger("lookalike")
    saved = (list(root.handlers), root.level, pkg.level, tqdm.auto.tqdm)
    tqdm.auto.tqdm = Silent
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            yield
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        pkg.setLevel(saved[2])
        tqdm.auto.tqdm = saved[3]


def _run(command: str) -> tuple[int, str]:
    """One command of an example: ``lookalike ...`` through the CLI, or ``head -N FILE``."""
    argv = shlex.split(command, comments=True)
    out = io.StringIO()
    if argv[0] == "head":
        lines = Path(argv[2]).read_text().splitlines(keepends=True)[: int(argv[1].lstrip("-"))]
        return 0, "".join(lines)
    if argv[0] != "lookalike":
        raise SystemExit(f"readme_examples: can run lookalike and head only, not {argv[0]!r}")
    from lookalike.cli import main

    with _captured(out):
        code = main(argv[1:])
    return code, out.getvalue()


def render(scratch: Path) -> dict[str, str]:
    """Every example's block (the text between its markers), run in ``scratch``."""
    from lookalike import get_encoder
    from lookalike.demo import DEMO_DIR

    (scratch / SAMPLE).parent.mkdir(parents=True, exist_ok=True)
    (scratch / SAMPLE).symlink_to(DEMO_DIR.resolve(), target_is_directory=True)
    if not STORE_DIR.is_dir():
        raise SystemExit(f"readme_examples: the store-demos data set is not at {STORE_DIR} (../shared beside the checkout)")
    (scratch / STORE).symlink_to(STORE_DIR.resolve(), target_is_directory=True)
    get_encoder(runtime="onnx", precision="fp32").prepare()  # a first run's one-time preparation is no example's output
    blocks = {}
    with _inside(scratch):
        for ex in EXAMPLES:
            printed = []
            for command, expected in zip(ex.commands, ex.exit_codes, strict=True):
                code, text = _run(command)
                if code != expected:
                    raise SystemExit(f"readme_examples: {command!r} exited {code}, not {expected}:\n{text}")
                printed.append(text)
            output = normalise("".join(printed), scratch=scratch, sample=DEMO_DIR)
            blocks[ex.name] = "```bash\n" + "\n".join(ex.commands) + "\n```\n```\n" + output.rstrip("\n") + "\n```\n"
    return blocks


_BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated -->)", re.S)


def rewrite(readme: str, blocks: dict[str, str]) -> tuple[str, list[str]]:
    """README text with each marked block replaced, and the names of those that changed."""
    found = [m["name"] for m in _BLOCK.finditer(readme)]
    unknown, missing = set(found) - set(blocks), set(blocks) - set(found)
    if unknown or missing:
        raise SystemExit(f"readme_examples: README blocks unknown here: {sorted(unknown)}; "
                         f"examples without a README block: {sorted(missing)}")
    changed = [m["name"] for m in _BLOCK.finditer(readme) if m["body"] != blocks[m["name"]]]
    return _BLOCK.sub(lambda m: m[1] + blocks[m["name"]] + m[4], readme), changed


#: how far a printed number (three or more decimals) may move between machines (float32 kernels)
TOLERANCE = 0.0011
_NUMBER = re.compile(r"-?\d+\.\d{3,}")


def same_but_last_digits(shown: str, now: str) -> bool:
    """Whether two blocks are equal but for numbers of three or more decimals within TOLERANCE."""
    a, b = shown.splitlines(), now.splitlines()
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x == y:
            continue
        if _NUMBER.split(x) != _NUMBER.split(y):
            return False
        nx, ny = _NUMBER.findall(x), _NUMBER.findall(y)
        if any(abs(float(p) - float(q)) > TOLERANCE for p, q in zip(nx, ny, strict=True)):
            return False
    return True


def check(readme: Path = README, scratch: Path | None = None) -> list[str]:
    """The differences between ``readme``'s blocks and what the examples print now (empty: none)."""
    with contextlib.ExitStack() as stack:
        folder = scratch or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="readme-examples-")))
        blocks = render(folder)
    old = readme.read_text()
    new, changed = rewrite(old, blocks)
    shown = {m["name"]: m["body"] for m in _BLOCK.finditer(old)}
    changed = [name for name in changed if not same_but_last_digits(shown[name], blocks[name])]
    if not changed:
        return []
    diff = difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True), "README.md",
                                "what the examples print now")
    return [f"blocks that differ: {', '.join(changed)}", "".join(diff)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when README.md differs")
    args = parser.parse_args(argv)
    if args.check:
        differ = check()
        print("\n".join(differ) or "README.md examples are up to date", file=sys.stderr if differ else sys.stdout)
        return 1 if differ else 0
    with tempfile.TemporaryDirectory(prefix="readme-examples-") as folder:
        blocks = render(Path(folder))
        new, changed = rewrite(README.read_text(), blocks)
        SHEET.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(folder) / "sheet.png", SHEET)
    README.write_text(new)
    print(f"README.md: {len(changed)} block(s) rewritten{': ' + ', '.join(changed) if changed else ''}; "
          f"contact sheet copied to {SHEET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
