"""CPU cost per photo of Hugging Face models (``--model hf:DIR``) against the default model.

Makes randomly-initialised models of the sizes people would bring (speed does not depend on
the weights' values; nothing is downloaded): CLIP ViT-B/16 (OpenCLIP ViT-B-16, FashionCLIP's
ViT-B/32 is cheaper) and SigLIP ViT-B/16 at 224 px (Marqo-FashionSigLIP's architecture), saves
each as a Hugging Face folder, exports it through ``hf:`` and times the image tower on real
photos already prepared (decoding and trimming cost the same for every model), fp32 and int8,
against the default EfficientNet-Lite0 (int8, 256 px), all on ONNX Runtime; then one text
query's text tower.

    python benchmarks/bench_hf_models.py ../shared/datasets/fashion-images/images \
        --out benchmarks/results/hf_models.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from machine import print_machine  # benchmarks/ is the script's folder

from lookalike import get_encoder
from lookalike.reading.images import model_input

BATCH = 32


def _tokenizer(words: int = 5000) -> Any:
    """A word-level tokenizer (the text tower's cost depends on the token count, not the words)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, **{f"w{i}": i + 3 for i in range(words)}}
    vocab["</s>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                       special_tokens=[("<s>", 2), ("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def make_folders(root: Path) -> dict[str, Path]:
    import torch
    import transformers as tf

    tok = _tokenizer()
    vocab = len(tok)
    torch.manual_seed(0)
    clip = tf.CLIPModel(tf.CLIPConfig(
        vision_config={"image_size": 224, "patch_size": 16},  # ViT-B/16: 768 wide, 12 layers
        text_config={"vocab_size": vocab, "eos_token_id": vocab - 1, "bos_token_id": 2, "pad_token_id": 0},
        projection_dim=512))
    siglip = tf.SiglipModel(tf.SiglipConfig(text_config={"vocab_size": vocab, "pad_token_id": 0}))  # base/16 @ 224
    made = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, model, processor in (
                ("clip-vit-b16", clip, tf.CLIPImageProcessor()),
                ("siglip-vit-b16", siglip, tf.SiglipImageProcessor(size={"height": 224, "width": 224}))):
            folder = root / name
            model.save_pretrained(folder)
            processor.save_pretrained(folder)
            tok.save_pretrained(folder)
            made[name] = folder
    return made


def one_pass(enc: Any, pixels: np.ndarray) -> float:
    """Photos per second of one pass over ``pixels``, in batches."""
    t0 = time.perf_counter()
    for i in range(0, len(pixels), BATCH):
        enc.encode_pixels(pixels[i : i + BATCH])
    return len(pixels) / (time.perf_counter() - t0)


def text_ms(enc: Any, repeats: int = 20) -> float:
    enc.encode_text("red running shoes")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        enc.encode_text("w1 w2 w3 w4 w5 w6")
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("photos", type=Path, help="a folder of product photos (*.jpg)")
    ap.add_argument("--limit", type=int, default=32, help="photos timed (default 32)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    machine = print_machine()
    photos = sorted(args.photos.glob("*.jpg"))[: args.limit]
    if not photos:
        raise SystemExit(f"no .jpg photos in {args.photos}")
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as cache:
        default = get_encoder(runtime="onnx")
        default.load()  # its session, before the cache moves: the default model's export is used as it is
        encoders = {f"{default.name} (default: {default.precision}, {default.preprocess.size} px)": default}
        os.environ["LOOKALIKE_CACHE_DIR"] = cache  # the exports of random models do not stay
        for name, folder in make_folders(Path(tmp)).items():
            t0 = time.perf_counter()
            fp32 = get_encoder(f"hf:{folder}", runtime="onnx")
            rows[f"{name} (fp32, 224 px)"] = {"export_s": round(time.perf_counter() - t0, 1),
                                             "text_query_ms": text_ms(fp32)}
            encoders[f"{name} (fp32, 224 px)"] = fp32
            encoders[f"{name} (int8, 224 px)"] = get_encoder(f"hf:{folder}", runtime="onnx", precision="int8")
        pixels = {label: np.stack([model_input(p, enc.preprocess) for p in photos]) for label, enc in encoders.items()}
        for label, enc in encoders.items():
            enc.encode_pixels(pixels[label][:BATCH])  # warm up: session, first allocations
        rates: dict[str, list[float]] = {label: [] for label in encoders}
        for _ in range(args.repeats):  # the models take turns, so the machine's load falls on each alike
            for label, enc in encoders.items():
                rates[label].append(one_pass(enc, pixels[label]))
        for label, enc in encoders.items():
            rate = statistics.median(rates[label])
            rows[label] = {**rows.get(label, {}), "photos_per_s": round(rate, 2), "ms_per_photo": round(1000 / rate, 1),
                           "dim": enc.dim}
            print(f"{label:<44} {rows[label]}")
    result = {"machine": machine, "photos": str(args.photos), "n_photos": len(photos), "batch": BATCH,
              "results": rows, "loadavg_end": os.getloadavg(),
              "command": "python benchmarks/bench_hf_models.py " + " ".join(
                  [str(args.photos), "--limit", str(args.limit), "--repeats", str(args.repeats)])}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
