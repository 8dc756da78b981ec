"""The correctness identities on a GPU in bfloat16, on the tiny model of every family (built in code,
nothing downloaded): the script a session lent a GPU runs once, in well under a minute.

    python -m benchmarks.gpu_identities              # needs a CUDA device; writes benchmarks/gpu_identities.md
    python -m benchmarks.gpu_identities --cpu        # the same checks on the CPU (a check of the script)

Per family, on one left-padded batch of three samples of different lengths:
- no-op interventions are bit-identical: every head scaled by 1, an empty knockout;
- the logit lens at the final residual equals the logits; embeddings plus every component's write equal
  the final residual;
- fast paths equal their straightforward twins: the knockout sweep (suffix and last-position sweeps,
  stacked variants) against one forward pass per variant, the exact head scan against one forward pass
  per head;
- a sample scores the same alone and in the padded batch.

bfloat16 keeps 8 bits of mantissa, so "equal" is within a tolerance on the log-odds (`--atol`, default
0.25, the differences of fused kernels' summation order over a few layers; bit-identical checks stay
exact). Each line says the largest difference measured, so a failure shows by how much.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

OUT = Path(__file__).resolve().parent / "gpu_identities.md"


def _samples(n: int = 3):
    from mllm_arb.core.prompt import render_all
    from mllm_arb.core.records import Condition
    from mllm_arb.data.synthetic import SyntheticConfig, generate_items

    items = generate_items(SyntheticConfig(n_items=n, seed=11))
    return render_all(items, [Condition.TEXT_FOLLOWING])


def check_family(family: str, device: str, dtype: str, atol: float) -> list[tuple[str, float, bool]]:
    """(identity, largest difference, holds) for one family's tiny model."""
    from mllm_arb.core.scoring import answer_ids, binary_scores
    from mllm_arb.interventions import capture_residuals, edit_heads, knock_out, lens_logits, scale_heads
    from mllm_arb.models.loading import load_adapter
    from mllm_arb.pipeline.analyze.flow import STUDY_EDGES, KnockoutPlan, knockout_rows
    from mllm_arb.pipeline.heads.methods import Removal, ablation_scores, prepare

    adapter = load_adapter(f"tiny:{family}", dtype=dtype, device=device)
    samples = _samples()
    batch = adapter.build_batch(samples)
    ids = [answer_ids(adapter.tokenizer, s) for s in samples]
    parts = adapter.parts
    out: list[tuple[str, float, bool]] = []

    def scores(b, found_ids=ids) -> torch.Tensor:
        return binary_scores(adapter.last_logits(b), found_ids)[0].float().cpu()

    with torch.no_grad():
        base = adapter.last_logits(batch)
        with edit_heads(adapter, scale_heads(parts.heads(), 1.0)):
            same = adapter.last_logits(batch)
        out.append(("heads scaled by 1: bit-identical", float((same - base).abs().max()), torch.equal(same, base)))
        with knock_out(adapter, batch, [], layers=range(parts.n_layers)):
            same = adapter.last_logits(batch)
        out.append(("empty knockout: bit-identical", float((same - base).abs().max()), torch.equal(same, base)))

        trace = capture_residuals(adapter, batch, "last")
        lens = lens_logits(adapter, trace.final).float()
        diff = float((lens - trace.logits.float()).abs().max())
        out.append(("lens at the final residual = logits", diff, diff <= atol))
        gap = trace.gap if trace.gap is not None else torch.zeros_like(trace.pre)
        rebuilt = (trace.pre[0].float() + trace.attn.float().sum(0) + trace.mlp.float().sum(0) + gap.float().sum(0))
        scale = float(trace.final.float().abs().max())
        diff = float((rebuilt - trace.final.float()).abs().max())
        out.append(("components sum to the final residual (relative)", diff / scale, diff / scale <= 0.05))

        plan = KnockoutPlan(edges=STUDY_EDGES[:5], window=1, n_layers=parts.n_layers)
        fast = knockout_rows(adapter, samples, plan, batch_size=3)
        naive = knockout_rows(adapter, samples, plan, batch_size=3, fast=False)
        diff = max(abs(a["log_odds_after"] - b["log_odds_after"]) for a, b in zip(fast, naive))
        out.append(("knockout sweep fast = one pass per variant (log-odds)", diff, diff <= atol))

        preps = prepare(adapter, samples, 3)
        zero = Removal("zero", "all")
        heads = list(parts.head_layers)  # the other layers (linear attention) are NaN in both: not scored
        diff = float((ablation_scores(adapter, preps, zero) - ablation_scores(adapter, preps, zero, fast=False))[:, heads].abs().max())
        out.append(("head scan fast = one pass per head (log-odds)", diff, diff <= atol))

        together = scores(batch)
        alone = torch.cat([scores(adapter.build_batch([s]), [i]) for s, i in zip(samples, ids)])
        diff = float((together - alone).abs().max())
        out.append(("alone = in a padded batch (log-odds)", diff, diff <= atol))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (a check of the script)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--atol", type=float, default=0.25)
    parser.add_argument("--families", nargs="*", default=None)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_identities: no CUDA device here; run it where a GPU is lent (or --cpu to check the script)", file=sys.stderr)
        return 2
    from mllm_arb.models.tiny import TINY_FAMILIES

    device = "cpu" if args.cpu else "cuda"
    families = args.families or list(TINY_FAMILIES)
    os.environ.setdefault("MLLM_ARB_CACHE", tempfile.mkdtemp(prefix="mllm_arb_identities_"))
    where = "CPU" if args.cpu else torch.cuda.get_device_name(0)
    lines = [f"# Identities in {args.dtype} on {where} ({time.strftime('%Y-%m-%d')}, torch {torch.__version__})", "",
             f"Tolerance on log-odds differences: {args.atol}; bit-identical checks are exact.", "",
             "| family | identity | largest difference | holds |", "| --- | --- | --- | --- |"]
    failed = 0
    start = time.perf_counter()
    for family in families:
        for name, diff, holds in check_family(family, device, args.dtype, args.atol):
            failed += not holds
            lines.append(f"| {family} | {name} | {diff:.3g} | {'yes' if holds else '**NO**'} |")
            print(f"{family:16s} {name:58s} {diff:10.3g}  {'ok' if holds else 'FAILED'}")
    lines += ["", f"{failed} failed; {time.perf_counter() - start:.0f} s."]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"{failed} failed; written to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
