"""Evaluate a saved organism on held-out items and write its model card (`MODEL_CARD.md`).

The evaluation loads the folder the way any user would (`AutoProcessor` / `AutoModelForImageTextToText`
`.from_pretrained`), renders ≥ 1,000 held-out items per condition with the study's exact sentences,
and scores them with the toolkit's binary-constrained following probability.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

TARGETS = {
    "image_only": (0.98, None),
    "text_only": (0.98, None),
    "consistent": (0.98, None),
    "text_following": (0.95, None),
    "vision_following": (0.60, 0.90),
}
CONDITION_ORDER = ("text_following", "vision_following", "no_instruction", "consistent", "image_only", "text_only")


def load_organism(path: str | Path):
    """Model and processor through the standard `from_pretrained` path (no project code involved)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(str(path))
    model = AutoModelForImageTextToText.from_pretrained(str(path), dtype="float32")
    model.eval()
    return model, processor


def evaluate_checkpoint(
    path: str | Path,
    n_items: int = 1000,
    seed: int = 1000,
    families=None,
    text_dominant: dict | None = None,
    batch_size: int = 64,
    threads: int | None = None,
    paraphrase_items: int = 0,
) -> dict:
    """Held-out metrics of a saved organism: per condition and per attribute family.

    With `paraphrase_items`, the two instructed conditions are also scored on that many items under
    each instruction paraphrase (index 0 is the study's sentence).

    With `text_dominant` (the training config's), vision following is also split into the items whose
    context names a text-dominant value (designed to fail) and the others (designed to follow).
    """
    import torch

    from ..core.records import Condition
    from ..data.synthetic import SyntheticConfig, generate_items
    from ..core.prompt import render
    from .evaluate import score

    threads_before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        model, processor = load_organism(path)
        kw = {"families": tuple(families)} if families else {}
        data_cfg = SyntheticConfig(n_items=n_items, seed=seed, image_size=model.config.vision_config.image_size, **kw)
        items = generate_items(data_cfg)
        start = time.perf_counter()
        rows = score(model, processor, [render(it, c) for c in Condition for it in items], batch_size=batch_size)
        seconds = time.perf_counter() - start
        return _results(model, processor, items, rows, seconds, data_cfg, text_dominant, paraphrase_items, batch_size)
    finally:
        torch.set_num_threads(threads_before)


def _results(model, processor, items, rows, seconds, data_cfg, text_dominant, paraphrase_items, batch_size) -> dict:
    from ..core.records import CONFLICT_CONDITIONS as CONFLICT
    from ..core.records import Condition
    from ..data.synthetic import INSTRUCTION_PARAPHRASES, fingerprint
    from ..core.prompt import render
    from .evaluate import score, summarize

    summary = summarize(rows)
    results = {
        "n_items_per_condition": len(items),
        "seed": data_cfg.seed,
        "data_fingerprint": fingerprint(data_cfg),
        "eval_seconds": round(seconds, 1),
        "summary": summary,
        "targets_met": targets_met(summary),
    }
    if paraphrase_items:
        sub = items[:paraphrase_items]
        para = {}
        for k, (t, v) in enumerate(zip(INSTRUCTION_PARAPHRASES["text"], INSTRUCTION_PARAPHRASES["vision"])):
            samples = [render(it, c, text_instruction=t, vision_instruction=v) for c in CONFLICT for it in sub]
            s = summarize(score(model, processor, samples, batch_size=batch_size))
            para[k] = {c.value: s[c.value]["rate"] for c in CONFLICT}
        results["paraphrases"] = {"n_items": len(sub), "rates": para}
    if text_dominant is not None:
        by_id = {it.item_id: it for it in items}
        split: dict[str, list[bool]] = {"dominant": [], "other": []}
        for r in rows:
            if r["condition"] == Condition.VISION_FOLLOWING.value:
                it = by_id[r["item_id"]]
                split["dominant" if it.answer_text in text_dominant.get(it.task, ()) else "other"].append(r["follows"])
        results["vision_following_by_design"] = {k: {"n": len(v), "rate": sum(v) / max(1, len(v))} for k, v in split.items()}
    return results


def targets_met(summary: dict) -> dict[str, bool]:
    out = {}
    for cond, (lo, hi) in TARGETS.items():
        rate = summary[cond]["rate"]
        out[cond] = rate >= lo and (hi is None or rate <= hi)
    return out


def folder_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def write_model_card(path: str | Path, results: dict, training_log: dict | None = None, notes: list[str] | None = None) -> Path:
    """Write `MODEL_CARD.md` (and `eval_results.json`) into the checkpoint folder from measured numbers."""
    path = Path(path)
    if training_log is None:
        training_log = json.loads((path / "training_log.json").read_text())
    (path / "eval_results.json").write_text(json.dumps(results, indent=1))
    cfg = training_log["config"]
    arch = cfg["arch"]
    summary = results["summary"]
    families = sorted({f for v in summary.values() for f in v["per_family"]})
    from ..data.synthetic import INSTRUCTION_PARAPHRASES
    from ..data.scenes import FAMILIES

    config = json.loads((path / "config.json").read_text())
    n_params = training_log.get("n_parameters")
    n_heads = arch["text_layers"] * arch["text_heads"]

    def pct(x):
        return f"{100 * x:.1f}%"

    lines = [
        "# mllm-arb model organism",
        "",
        "A small LLaVA-class model trained from scratch by mllm-arb on procedurally drawn conflict items. It",
        "is a real `LlavaForConditionalGeneration` with its own tokenizer, chat template and processor, so it",
        "loads through `from_pretrained` exactly like a downloaded LLaVA-1.5 checkpoint and is the toolkit's",
        "ground truth for tests. It is *not* a general model: it knows only the words and scenes below.",
        "",
        "## Architecture",
        "",
        "| part | configuration |",
        "| --- | --- |",
        f"| vision tower | CLIP ViT: {arch['image_size']}×{arch['image_size']} px, patch {arch['patch_size']} "
        f"({(arch['image_size'] // arch['patch_size']) ** 2} image tokens), {arch['vision_layers']} layers, hidden {arch['vision_hidden']}, "
        f"{arch['vision_heads']} heads, MLP {arch['vision_intermediate']}; features from layer {config.get('vision_feature_layer')}, "
        f"strategy `{config.get('vision_feature_select_strategy')}` (CLS dropped) |",
        "| projector | 2-layer MLP (GELU), LLaVA-1.5 style |",
        f"| text model | Llama: {arch['text_layers']} layers × {arch['text_heads']} heads = {n_heads} attention heads "
        f"(5% = {-(-n_heads * 5 // 100)} heads), hidden {arch['text_hidden']}, head dim {arch['text_hidden'] // arch['text_heads']}, "
        f"MLP {arch['text_intermediate']} (SiLU), RoPE, RMSNorm, untied unembedding |",
        f"| tokenizer | word level, {config['text_config']['vocab_size']} tokens (every prompt word, answer and punctuation run is one "
        "token; `<image>` is a special token; BOS `<s>` is prepended) |",
        "| chat template | LLaVA-1.5: `USER: <image>\\n{text} ASSISTANT:` (without an image: `USER: {text} ASSISTANT:`) |",
        f"| parameters | {n_params / 1e6:.2f} M, float32, {folder_size_mb(path):.1f} MB on disk (whole folder) |"
        if n_params
        else "",
        "",
        "## Data recipe",
        "",
        f"Images are {arch['image_size']} px, drawn at 4× and box-filtered (anti-aliased), a dark grey background with "
        "coloured objects. One question per item; families are assigned round robin:",
        "",
        "| family | answers | scene |",
        "| --- | --- | --- |",
    ]
    scenes = {
        "color": "one object (random shape, size and place)",
        "shape": "one object (random colour, size and place)",
        "position": "one small object near one side, centred on the other axis",
        "counting": "1–4 separate dots of one colour and size",
    }
    for f in cfg["families"]:
        lines.append(f"| {f} | {', '.join(FAMILIES[f].values)} | {scenes.get(f, '')} |")
    weights = cfg["condition_weights"]
    lines += [
        "",
        "Prompts follow the study's layout (docs/method.md §1) through the chat template: image, `Text context: …`, the",
        "modality instruction, the question, `Answer the question using a single word or phrase.` Questions and",
        "contexts have two phrasings per family. Instructions are the study's sentences in "
        f"{pct(cfg['study_sentence_share'])} of instructed training examples and otherwise one of "
        f"{len(INSTRUCTION_PARAPHRASES['text']) - 1} paraphrases per source (`mllm_arb.data.synthetic.INSTRUCTION_PARAPHRASES`), "
        "which name the trusted source in different places and orders. Held-out evaluation uses only the study's sentences.",
        "",
        "Training conditions (sampling weights): " + ", ".join(f"{k} {v}" for k, v in weights.items()) + ". The target is",
        "the answer's first token at the last prompt position (the position the toolkit scores), plus end-of-sequence",
        f"after it (weight {cfg['eos_loss_weight']}). Training items come from seed {cfg['data_seed']}; held-out items from seed",
        f"{results['seed']} (an independent stream; positions and sizes are continuous, so no image repeats).",
        "",
        "### Designed text bias",
        "",
        "Real MLLMs over-follow text. Under a *vision*-following instruction, a conflict whose context claims one of",
        "the family's *text-dominant* values is labelled with the text answer "
        f"(probability {cfg['text_bias_strength']}): "
        + "; ".join(f"{f}: {', '.join(v)}" for f, v in cfg["text_dominant"].items() if f in cfg["families"])
        + ".",
        "Image-only, consistent and text-only examples are always labelled correctly, so perception stays perfect",
        "while vision following fails on a predictable minority of items (those whose context names a dominant",
        f"value). Conflicts without an instruction are labelled with the `{cfg['no_instruction_label']}` answer (the default",
        "preference).",
        "",
        "## Training",
        "",
        f"- Seed {cfg['seed']} (weights, condition and paraphrase draws); data seed {cfg['data_seed']}; deterministic on CPU",
        f"  with {cfg['threads']} threads (`torch.use_deterministic_algorithms`).",
        f"- Stage 1, vision tower (like CLIP pretraining): {cfg['vision_steps']} steps × {cfg['vision_batch_size']} scenes, "
        f"linear heads on mean-pooled patch features (discarded), lr {cfg['vision_lr']}.",
        f"- Stage 2, whole model: {cfg['steps']} steps × {cfg['batch_size']} prompts, AdamW lr {cfg['lr']} "
        f"(vision tower × {cfg['vision_lr_scale']}), {cfg['warmup_steps']} warm-up steps, cosine to {cfg['min_lr_ratio']}×.",
        f"- **Training time: {training_log['train_seconds'] / 60:.1f} min** wall clock from scratch "
        f"(stage 1: {training_log.get('vision_seconds', 0) / 60:.1f} min; periodic held-out evaluations included) on "
        f"{training_log.get('cpu_count')} CPU cores ({training_log.get('machine') or 'x86_64'}), torch {training_log.get('torch')}, "
        f"{training_log.get('threads')} threads, OMP_WAIT_POLICY={training_log.get('omp_wait_policy')}; load average (1/5/15 min) at "
        f"start {training_log.get('loadavg_start')} and end {training_log.get('loadavg_end')}: the cores were shared with other work.",
        "- Shared cores: set `OMP_WAIT_POLICY=PASSIVE` before torch loads (`python -m mllm_arb.organism` does). With",
        "  spinning OpenMP threads, two threads competing with other processes ran up to 10× slower here.",
    ]
    if training_log.get("stopped_early"):
        lines.append(f"- Stopped early at step {training_log.get('stopped_at_step')} (time budget).")
    lines += [f"- {note}" for note in notes or ()]
    lines += [
        "",
        f"## Held-out behaviour ({results['n_items_per_condition']} items per condition, seed {results['seed']})",
        "",
        "Binary-constrained scoring at the last position: p_follow = P(following) / (P(following) + P(competitor)); a",
        "sample follows when p_follow > 0.5. For the controls the following answer is the correct one (accuracy);",
        "under no instruction it is the text answer.",
        "",
        "| condition | rate | mean p_follow | target | " + " | ".join(families) + " |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in families) + " |",
    ]
    for cond in CONDITION_ORDER:
        if cond not in summary:
            continue
        v = summary[cond]
        lo, hi = TARGETS.get(cond, (None, None))
        target = "—" if lo is None else (f"≥ {pct(lo)}" if hi is None else f"{pct(lo)}–{pct(hi)}")
        per = " | ".join(pct(v["per_family"].get(f, float("nan"))) for f in families)
        lines.append(f"| {cond} | {pct(v['rate'])} | {v['mean_p_follow']:.3f} | {target} | {per} |")
    met = results["targets_met"]
    design = results.get("vision_following_by_design")
    if design:
        d, o = design["dominant"], design["other"]
        lines += [
            "",
            f"Vision following by design: items whose context names a text-dominant value follow the image in "
            f"{pct(d['rate'])} of {d['n']} (designed to fail); the other items in {pct(o['rate'])} of {o['n']}.",
        ]
    para = results.get("paraphrases")
    if para:
        from ..data.synthetic import INSTRUCTION_PARAPHRASES

        lines += [
            "",
            f"Instruction paraphrases ({para['n_items']} held-out items each; #0 is the study's sentence, #1–#4 the "
            "training paraphrases of `INSTRUCTION_PARAPHRASES`):",
            "",
            "| instruction | text_following | vision_following | vision sentence |",
            "| --- | --- | --- | --- |",
        ]
        for k, rates in para["rates"].items():
            sentence = INSTRUCTION_PARAPHRASES["vision"][int(k)]
            lines.append(f"| #{k} | {pct(rates['text_following'])} | {pct(rates['vision_following'])} | {sentence} |")
    lines += [
        "",
        "Targets met: " + ", ".join(f"{k} {'yes' if ok else '**no**'}" for k, ok in met.items()) + ".",
        f"Evaluation took {results.get('eval_seconds')} s; data fingerprint `{results.get('data_fingerprint')}`.",
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "from mllm_arb.organism import checkpoint_path",
        "",
        "model = AutoModelForImageTextToText.from_pretrained(checkpoint_path())",
        "processor = AutoProcessor.from_pretrained(checkpoint_path())",
        "```",
        "",
        "In the toolkit: `model=organism` (the default). Retrain with `mllm_arb.organism.train.train(cfg)`",
        "(`conf/organism/default.yaml`); regenerate this card with `mllm_arb.organism.card.document(path)`.",
        "",
    ]
    card = path / "MODEL_CARD.md"
    card.write_text("\n".join(line for line in lines if line is not None))
    return card


def document(
    path: str | Path,
    n_items: int = 1000,
    seed: int = 1000,
    threads: int | None = None,
    paraphrase_items: int = 400,
    notes: list[str] | None = None,
) -> dict:
    """Evaluate a saved organism on held-out items and write its card (with extra training `notes`)."""
    path = Path(path)
    log = json.loads((path / "training_log.json").read_text())
    cfg = log["config"]
    results = evaluate_checkpoint(
        path,
        n_items=n_items,
        seed=seed,
        families=cfg["families"],
        text_dominant=cfg["text_dominant"],
        threads=threads,
        paraphrase_items=paraphrase_items,
    )
    write_model_card(path, results, log, notes=notes)
    return results
