"""The fast paths' ratios on a GPU, in bfloat16, on random-weight models shaped like the checkpoints people
study: a 7B LLaVA (32 layers × 32 heads, d 4096, a CLIP ViT-L/14 tower at 336 px: 576 image tokens, a
32,000-word unembedding) and a Qwen2.5-VL-7B (28 layers × 28 heads with 4 key-value heads, d 3584, its
own vision tower with windowed attention and 3-D rotary positions; images resized to 672 px: 576 image
tokens). Nothing is downloaded: both are built in code from configs, with the organism's and the tiny
Qwen2.5-VL's tokenizers (prompts tokenise to fewer, longer words than a real tokenizer's).

    python -m benchmarks.gpu                # needs a CUDA device; writes benchmarks/gpu_results.md
    python -m benchmarks.gpu --smoke        # the same code at toy sizes on the CPU (a check of the script)

Each benchmark is `make bench`'s (knockout sweep, blocking and amplification arms, the exact head scan at
every position with and without stacked variants and at the last position, attribution), timed with the
device synchronised. A budget (default 420 s, the script's whole run under 8 minutes with model building)
skips what would not finish; what was skipped is listed, never silently dropped.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

from . import bench_arms, bench_attribution, bench_head_scan, bench_knockout
from .common import BATCH_SIZES, MODELS, describe, header, machine, prepared

OUT = Path(__file__).resolve().parent / "gpu_results.md"
#: name -> (text sizes, vision sizes) at full size; `--smoke` divides them down (see `_shrink`)
LLAVA_7B = dict(image_size=336, patch_size=14, vision_hidden=1024, vision_layers=24, vision_heads=16, vision_intermediate=4096,
                text_hidden=4096, text_layers=32, text_heads=32, text_intermediate=11008, max_positions=2048)  # fmt: skip
LLAVA_VOCAB = 32000
QWEN25_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                 head_dim=128, vocab_size=152064, mrope_section=[16, 24, 24])  # fmt: skip
QWEN25_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584, patch_size=14,
                     spatial_merge_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31])  # fmt: skip
QWEN_IMAGE_PIXELS = 672 * 672
BENCHMARKS = (bench_knockout, bench_arms, bench_head_scan, bench_attribution)


def _shrink(sizes: dict, smoke: bool) -> dict:
    """Toy sizes for `--smoke`: widths and depths cut so that the whole script runs in a minute on a CPU."""
    if not smoke:
        return dict(sizes)
    out = dict(sizes)
    for key, small in (("text_hidden", 64), ("text_layers", 4), ("text_heads", 4), ("text_intermediate", 128),
                       ("vision_hidden", 32), ("vision_layers", 2), ("vision_heads", 2), ("vision_intermediate", 64),
                       ("image_size", 56), ("hidden_size", 64), ("intermediate_size", 128), ("num_hidden_layers", 4),
                       ("num_attention_heads", 4), ("num_key_value_heads", 2), ("head_dim", 16), ("vocab_size", 4096),
                       ("mrope_section", [2, 3, 3]), ("depth", 2), ("num_heads", 2), ("out_hidden_size", 64),
                       ("fullatt_block_indexes", [1]), ("window_size", 56)):  # fmt: skip
        if key in out:
            out[key] = small
    return out


def llava_7b(device: str, dtype: torch.dtype, smoke: bool):
    from transformers import LlavaForConditionalGeneration

    from mllm_arb.models.llava import LlavaAdapter
    from mllm_arb.organism.build import ArchConfig, build_config, build_processor

    arch = ArchConfig(**_shrink(LLAVA_7B, smoke))
    processor = build_processor(arch)
    config = build_config(processor.tokenizer, arch)
    config.text_config.vocab_size = 4096 if smoke else LLAVA_VOCAB  # rows past the tokenizer's are never read
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, torch_dtype=dtype).eval()
    return LlavaAdapter(model, processor, name=f"random-llava-7b-shape{'-smoke' if smoke else ''}")


def qwen25_vl_7b(device: str, dtype: torch.dtype, smoke: bool):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from mllm_arb.models.loading import load_adapter
    from mllm_arb.models.qwen2_vl import Qwen2_5_VLAdapter

    tiny = load_adapter("tiny:qwen2_5_vl")  # its tokenizer, chat template and processor class, offline
    config = copy.deepcopy(tiny.model.config)
    # fresh sub-configs from the tiny one's fields and the new sizes, so derived fields (layer types) follow
    text = _shrink(QWEN25_7B, smoke)
    fields = {k: v for k, v in config.text_config.to_dict().items() if k not in ("layer_types", "model_type")}
    fields["rope_parameters"] = {**(fields.get("rope_parameters") or {}), "mrope_section": text.pop("mrope_section")}
    config.text_config = type(config.text_config)(**{**fields, **text})
    vision = {**_shrink(QWEN25_VISION, smoke)}
    vision["out_hidden_size"] = config.text_config.hidden_size
    fields = {k: v for k, v in config.vision_config.to_dict().items() if k != "model_type"}
    config.vision_config = type(config.vision_config)(**{**fields, **vision})
    processor = copy.deepcopy(tiny.processor)
    image = processor.image_processor
    image.patch_size, image.merge_size = config.vision_config.patch_size, config.vision_config.spatial_merge_size
    pixels = (4 * 28) ** 2 if smoke else QWEN_IMAGE_PIXELS
    image.min_pixels = image.max_pixels = pixels
    if isinstance(getattr(image, "size", None), dict):
        image.size = {"shortest_edge": pixels, "longest_edge": pixels}
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, torch_dtype=dtype).eval()
    return Qwen2_5_VLAdapter(model, processor, name=f"random-qwen2.5-vl-7b-shape{'-smoke' if smoke else ''}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: check the script, measure nothing")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the benchmarks (model building apart)")
    parser.add_argument("--out", type=Path, default=None, help=f"the Markdown table (default {OUT.name}; --smoke: none)")
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("benchmarks.gpu: no CUDA device here; run it on a GPU machine, or --smoke for a CPU check of the script", file=sys.stderr)
        return 2
    device, dtype = ("cpu", torch.float32) if args.smoke else ("cuda", torch.bfloat16)
    start = time.perf_counter()
    builders = {"llava-7b-shape": llava_7b, "qwen2.5-vl-7b-shape": qwen25_vl_7b}
    results, skipped = [], []
    for name, build in builders.items():  # both at once (2 × 15 GB in bfloat16), so each benchmark covers both
        built = time.perf_counter()
        adapter = build(device, dtype, args.smoke)
        MODELS[name] = lambda adapter=adapter: adapter
        BATCH_SIZES[name] = 2
        bench_attribution.N_ITEMS[name] = 2
        batch = prepared(adapter, 2, 2)[0].batch
        n_image = int((batch.inputs["input_ids"][0] == adapter.image_token_id).sum())
        header(f"{describe(adapter)}; {dtype} on {device}; {batch.inputs['input_ids'].shape[1]} tokens a row "
               f"({n_image} image tokens); built in {time.perf_counter() - built:.0f} s")
    # the cheapest and most asked-for first: when the budget runs out, what is left is the naive exact scans
    for bench in BENCHMARKS:
        for name in builders:
            if time.perf_counter() - start > args.budget:
                skipped.append(f"{bench.__name__.rsplit('.', 1)[-1]} on {name} (budget of {args.budget:.0f} s spent)")
                continue
            kwargs = {"repeat": 1} if bench in (bench_head_scan, bench_knockout, bench_arms) else {}
            out = bench.run(name, **kwargs)
            results += out if isinstance(out, list) else [out]
    elapsed = time.perf_counter() - start
    lines = [f"Measured {time.strftime('%Y-%m-%d')} by `python -m benchmarks.gpu` in {elapsed:.0f} s on "
             f"{torch.cuda.get_device_name() if device == 'cuda' else machine()}, {dtype}, torch {torch.__version__}.", "",
             "| benchmark | model | batch | measured | ratio | target | verdict | detail |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.benchmark} | {r.model} | {r.batch_size} | {r.measured} | {r.ratio:.3g} | {r.target} | {r.verdict} | {r.detail} |" for r in results]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(skipped) + "."]
    table = "\n".join(lines)
    print("\n" + table)
    out = args.out or (None if args.smoke else OUT)
    if out is not None:
        out.write_text(table + "\n")
        print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
