"""Train the organism from scratch on CPU, deterministically from a seed.

Each step draws fresh synthetic items (seed `data_seed`, never the held-out seeds ≥ 1000), renders
each under one condition of docs/method.md §1 with a randomly chosen instruction paraphrase, and trains
the answer's first token at the last prompt position (plus, with a small weight, the end-of-sequence
token after it, so greedy generation stops after one word).

The designed text bias (issue §3): under a vision-following instruction, a conflict whose context
claims one of the *text-dominant* values of its family (`text_dominant`) is labelled with the text
answer (with probability `text_bias_strength`). Perception is untouched (image-only, consistent and
text-only examples are always labelled correctly), so vision following fails on a real, predictable
minority of held-out items, like real MLLMs that over-follow text.

`train(cfg)` takes a `TrainConfig`, a plain dict, or an OmegaConf node (`conf/organism/default.yaml`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..core.prompt import render
from ..core.records import Condition, ConflictItem, Sample
from ..data.scenes import COLORS, COUNTS, FAMILIES, FAMILY_NAMES, POSITIONS, SHAPES, draw, sample_scene
from ..data.synthetic import INSTRUCTION_PARAPHRASES, SyntheticConfig, fingerprint, generate_item, generate_items
from .build import ArchConfig, build_model, build_processor

DEFAULT_CONDITION_WEIGHTS = {
    "text_following": 0.2,
    "vision_following": 0.3,
    "consistent": 0.1,
    "image_only": 0.2,
    "text_only": 0.1,
    "no_instruction": 0.1,
}
DEFAULT_TEXT_DOMINANT = {"color": ["red", "yellow"], "shape": ["circle"], "position": ["left"], "counting": ["two"]}


@dataclass
class PlantConfig:
    """A planted instruction-anchor route (docs/ground-truth.md): the heads that carry it, and how hard
    training pushes every other head off the edges the route closes."""

    #: [layer, head] of the transfer heads (first half of the layers) and arbitration heads (second half)
    transfer_heads: list[list[int]] = field(default_factory=lambda: [[0, 2], [1, 5], [2, 1], [3, 6]])
    arbitration_heads: list[list[int]] = field(default_factory=lambda: [[5, 3], [6, 4]])
    #: [layer, head] of relay heads (first half): with any, instruction positions there read each other
    #: only through them and the transfer heads
    relay_heads: list[list[int]] = field(default_factory=list)
    #: instructed rows train under the route's per-head knockout: the answer can only come through it
    restrict: bool = True
    #: restriction and anchor loss start at this step; before it every row trains unrestricted, as the
    #: natural organism does (the task's features first, then the route)
    route_start: int = 0
    #: weight of the mean attention mass the model's own (unrestricted) attention would put on closed
    #: edges of instructed rows; it makes the open edges irrelevant at inference
    mass_weight: float = 3.0
    #: weight of the anchor loss: an instructed row's training label is also the target of the model's
    #: own output at the instruction's last token (the route's first hop gets a direct signal)
    anchor_loss_weight: float = 1.0
    #: weight of the route's attention loss: -log of the mass each planted head's served rows put on the
    #: keys its edge opens (instruction rows on image and context; the last row on the instruction)
    attention_weight: float = 1.0
    #: the weight is 0 before `mass_start` and reaches `mass_weight` linearly over `mass_ramp` steps
    mass_start: int = 200
    mass_ramp: int = 200
    #: how the penalty averages: "all" (one mean over every (row, head, query) with a closed key) or
    #: "groups" (the mean of the means of the instruction, the positions after it, and the last position:
    #: the one position that answers weighs as much as the many question and format positions)
    mass_mean: str = "all"
    #: the attention loss narrows to the anchor: transfer heads serve the instruction's last token, and
    #: arbitration heads read it (false: every instruction position, the whole instruction)
    anchor_targets: bool = False
    #: each step, every head outside the route is zeroed (at every position, every row) with this
    #: probability: the model learns not to lean on any one of them, so the planted heads, which the
    #: restriction makes irreplaceable, are the ones whose removal costs most
    head_dropout: float = 0.0
    #: share of instructed rows that train with the route cut instead of restricted: instruction->last
    #: knocked out in every layer and head, every other edge open, and the two answers at equal odds as
    #: the target (what the restricted model gives under that cut), so the open edges learn not to stand
    #: in for a cut route
    cut_share: float = 0.0
    #: share of instructed rows that train plain (every edge open) with their label, beside the cut rows:
    #: the intact model is told to follow the instruction when the route is there
    open_share: float = 0.0
    #: a cut row's target: "equal" (its two answers at equal odds) or "restricted" (the route-restricted
    #: model's own next-token distribution under the same cut, computed without gradient)
    cut_target: str = "equal"
    #: share of cut rows whose cut is the relay (instruction->instruction in the relay layers, every head)
    #: instead of instruction->last
    relay_cut_share: float = 0.0

    def mass_weight_at(self, step: int) -> float:
        if step < self.mass_start:
            return 0.0
        return self.mass_weight * min(1.0, (step - self.mass_start + 1) / max(1, self.mass_ramp))

    def ground_truth(self, arch: ArchConfig):
        from ..core.ground_truth import GroundTruth

        return GroundTruth(
            arch.text_layers,
            arch.text_heads,
            tuple((int(l), int(h)) for l, h in self.transfer_heads),
            tuple((int(l), int(h)) for l, h in self.arbitration_heads),
            tuple((int(l), int(h)) for l, h in self.relay_heads),
        )


@dataclass
class TrainConfig:
    seed: int = 0  # weight init and the order of conditions and paraphrases
    data_seed: int = 0  # the training items' stream (held-out data uses seeds >= 1000)
    eval_seed: int = 1000
    steps: int = 800
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    threads: int = 2
    image_size: int = 32
    families: tuple[str, ...] = FAMILY_NAMES
    arch: ArchConfig = field(default_factory=ArchConfig)
    #: sampling weights of the conditions in training batches
    condition_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_CONDITION_WEIGHTS))
    #: share of instructed examples that use the study's exact sentence (others: a paraphrase)
    study_sentence_share: float = 0.5
    #: per family, context values that win over the image even under a vision instruction
    text_dominant: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_TEXT_DOMINANT.items()})
    text_bias_strength: float = 1.0
    #: label of conflicts without instruction: "text", "image", or "none" (not trained)
    no_instruction_label: str = "text"
    eos_loss_weight: float = 0.1
    #: stage 1 (like CLIP pretraining for real LLaVA): train the vision tower alone to classify the
    #: drawn attributes from its mean-pooled patch features (linear heads, discarded afterwards)
    vision_steps: int = 600
    vision_batch_size: int = 128
    vision_lr: float = 3e-3
    vision_eval_every: int = 100
    #: stage 2: the vision tower's learning rate relative to `lr` (0 freezes it)
    vision_lr_scale: float = 0.3
    eval_every: int = 100
    eval_items: int = 32  # per condition, for the periodic held-out metrics
    max_minutes: float | None = None  # safety stop (breaks determinism when hit; recorded)
    #: continue from a saved organism's weights (same architecture) instead of a fresh init; stage 1 is
    #: skipped. A second stage of training, recorded in the log beside the first's config
    init_from: str | None = None
    output_dir: str = "outputs/organism/checkpoint"
    overwrite: bool = False
    progress: bool = True
    #: a planted route (the `organism_anchor` model); None trains the natural organism
    plant: PlantConfig | None = None

    def __post_init__(self) -> None:
        # the top-level image size is the one that counts (data and vision tower must agree)
        if self.arch.image_size != self.image_size:
            self.arch = dataclasses.replace(self.arch, image_size=self.image_size)

    @classmethod
    def from_any(cls, cfg) -> "TrainConfig":
        if isinstance(cfg, cls):
            return cfg
        if hasattr(cfg, "_metadata") or type(cfg).__name__ in ("DictConfig", "ListConfig"):
            from omegaconf import OmegaConf

            cfg = OmegaConf.to_container(cfg, resolve=True)
        if dataclasses.is_dataclass(cfg):
            cfg = asdict(cfg)
        if not isinstance(cfg, Mapping):
            raise TypeError(f"train() takes a TrainConfig, a dict or an OmegaConf config, not {type(cfg).__name__}")
        data = dict(cfg)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown organism training options: {', '.join(unknown)}")
        if "arch" in data and not isinstance(data["arch"], ArchConfig):
            data["arch"] = ArchConfig(**dict(data["arch"]))
        if data.get("plant") is not None and not isinstance(data["plant"], PlantConfig):
            data["plant"] = PlantConfig(**dict(data["plant"]))
        if "families" in data:
            data["families"] = tuple(data["families"])
        return cls(**data)

    @property
    def init_dir(self) -> Path | None:
        """`init_from` as a folder; "organism" names the shipped natural organism."""
        if self.init_from is None:
            return None
        if str(self.init_from) == "organism":
            from ..core.paths import CHECKPOINT_DIR

            return CHECKPOINT_DIR
        return Path(str(self.init_from))

    def validate(self) -> None:
        for name in self.condition_weights:
            Condition(name)
        if self.no_instruction_label not in ("text", "image", "none"):
            raise ValueError("no_instruction_label must be text, image or none")
        for fam, values in self.text_dominant.items():
            if fam not in FAMILIES:
                raise ValueError(f"text_dominant names an unknown family {fam!r}")
            bad = [v for v in values if v not in FAMILIES[fam].values]
            if bad:
                raise ValueError(f"text_dominant[{fam}] holds values that are not answers of the family: {bad}")
        if self.plant is not None:
            self.plant.ground_truth(self.arch)  # raises on heads outside the model or the wrong half
            if self.plant.route_start > self.plant.mass_start and self.plant.mass_weight > 0:
                raise ValueError("plant.route_start must not come after plant.mass_start")
            if self.plant.mass_mean not in ("all", "groups"):
                raise ValueError(f"plant.mass_mean must be 'all' or 'groups', got {self.plant.mass_mean!r}")
            for name, kind in (("mass_weight", float), ("anchor_loss_weight", float), ("attention_weight", float),
                               ("mass_start", int), ("mass_ramp", int), ("route_start", int)):
                value = getattr(self.plant, name)
                allowed = (int,) if kind is int else (int, float)
                if isinstance(value, bool) or not isinstance(value, allowed) or not value >= 0:
                    raise ValueError(f"plant.{name} must be {'a whole number' if kind is int else 'a number'} >= 0, not {value!r}")
            if self.plant.cut_target not in ("equal", "restricted"):
                raise ValueError(f"plant.cut_target must be 'equal' or 'restricted', not {self.plant.cut_target!r}")
            for name in ("head_dropout", "cut_share", "open_share", "relay_cut_share"):
                share = getattr(self.plant, name)
                if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1:
                    raise ValueError(f"plant.{name} must be a probability in [0, 1), not {share!r}")
            if self.plant.cut_share + self.plant.open_share >= 1:
                raise ValueError("plant.cut_share + plant.open_share must stay below 1 (some rows train on the route)")
            if not isinstance(self.plant.anchor_targets, bool):
                raise ValueError(f"plant.anchor_targets must be true or false, not {self.plant.anchor_targets!r}")
            if not isinstance(self.plant.restrict, bool):
                raise ValueError(f"plant.restrict must be true or false, not {self.plant.restrict!r}")
        if self.init_from is not None and not (self.init_dir / "config.json").is_file():
            raise ValueError(f"init_from {self.init_from}: no saved organism there")
        if self.data_seed == self.eval_seed:
            raise ValueError("data_seed and eval_seed must differ (held-out items come from eval_seed)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["families"] = list(self.families)
        return d


# ------------------------------------------------------------------------------------ samples
def instruction_choice(rng: np.random.Generator, kind: str, study_share: float) -> str:
    options = INSTRUCTION_PARAPHRASES[kind]
    if rng.random() < study_share or len(options) == 1:
        return options[0]
    return options[1 + int(rng.integers(len(options) - 1))]


def training_example(item: ConflictItem, condition: Condition, cfg: TrainConfig, rng: np.random.Generator) -> tuple[Sample, str]:
    """Render an item under a condition (with a paraphrased instruction) and give its training label."""
    text_instr = instruction_choice(rng, "text", cfg.study_sentence_share)
    vision_instr = instruction_choice(rng, "vision", cfg.study_sentence_share)
    sample = render(item, condition, text_instruction=text_instr, vision_instruction=vision_instr)
    return sample, training_label(item, condition, cfg, rng)


def training_label(item: ConflictItem, condition: Condition, cfg: TrainConfig, rng: np.random.Generator | None = None) -> str:
    """The answer the organism is trained to give (the designed text bias lives here)."""
    if condition in (Condition.TEXT_FOLLOWING, Condition.TEXT_ONLY):
        return item.answer_text
    if condition in (Condition.CONSISTENT, Condition.IMAGE_ONLY):
        return item.answer_image
    if condition is Condition.NO_INSTRUCTION:
        return item.answer_text if cfg.no_instruction_label == "text" else item.answer_image
    if condition is Condition.VISION_FOLLOWING:
        dominant = item.answer_text in cfg.text_dominant.get(item.task, ())
        strength = cfg.text_bias_strength
        if dominant and (strength >= 1.0 or (rng is not None and rng.random() < strength)):
            return item.answer_text
        return item.answer_image
    raise ValueError(condition)


# ------------------------------------------------------------------------------------ training
def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _conditions(cfg: TrainConfig) -> tuple[list[Condition], np.ndarray]:
    weights = dict(cfg.condition_weights)
    if cfg.no_instruction_label == "none":
        weights.pop("no_instruction", None)
    conds = [Condition(c) for c, w in weights.items() if w > 0]
    w = np.array([weights[c.value] for c in conds], dtype=float)
    return conds, w / w.sum()


def make_batch(step: int, cfg: TrainConfig, data_cfg: SyntheticConfig, processor):
    """The inputs and labels of one training step (a pure function of the config and the step)."""
    import torch

    from .batching import encode, first_token_id

    rng = np.random.default_rng([cfg.seed, step, 0xB47C])
    conds, probs = _conditions(cfg)
    samples, labels = [], []
    for j in range(cfg.batch_size):
        item = generate_item(data_cfg, step * cfg.batch_size + j)
        cond = conds[int(rng.choice(len(conds), p=probs))]
        sample, label = training_example(item, cond, cfg, rng)
        samples.append(sample)
        labels.append(label)
    inputs = encode(processor, samples)
    tok = processor.tokenizer
    targets = torch.tensor([first_token_id(tok, a) for a in labels])
    # append the target so the next position can learn to stop (causal: the prompt's last logits are unchanged)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], targets[:, None]], dim=1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(targets)[:, None]], dim=1)
    return inputs, targets, samples


# ------------------------------------------------------------------------------------ stage 1
#: the attribute labels of stage 1: colour for every scene, shape except in counting scenes (always
#: dots), the number of objects for every scene, the side only in position scenes (elsewhere ambiguous)
ATTRIBUTE_HEADS = {"color": COLORS, "shape": SHAPES, "counting": COUNTS, "position": POSITIONS}


def scene_batch(seed: int, step: int, n: int, image_size: int, families, image_processor, stream: int = 0x71510):
    """Pixel values and attribute labels (-100: not supervised) of `n` fresh scenes."""
    import torch

    images, labels = [], []
    for j in range(n):
        rng = np.random.default_rng([seed, step * n + j, stream])
        fam = families[j % len(families)]
        answer = str(rng.choice(FAMILIES[fam].values))
        scene = sample_scene(rng, fam, image_size, answer)
        images.append(draw(scene))
        first = scene.objects[0]
        labels.append(
            [
                tuple(COLORS).index(first.color),
                SHAPES.index(first.shape) if fam != "counting" else -100,
                len(scene.objects) - 1,
                POSITIONS.index(answer) if fam == "position" else -100,
                FAMILY_NAMES.index(fam),
            ]
        )
    return image_processor(images, return_tensors="pt")["pixel_values"], torch.tensor(labels)


def vision_features(model, pixel_values):
    """The patch features LLaVA hands to its projector (same layer, CLS dropped under "default")."""
    cfg = model.config
    out = model.model.vision_tower(pixel_values=pixel_values, output_hidden_states=True)
    feats = out.hidden_states[cfg.vision_feature_layer]
    return feats[:, 1:] if cfg.vision_feature_select_strategy == "default" else feats


def pretrain_vision(model, processor, cfg: TrainConfig, console, bar=None) -> list[dict]:
    """Stage 1: the vision tower learns the attributes (linear heads on mean-pooled patch features)."""
    import torch
    import torch.nn.functional as F

    if cfg.vision_steps <= 0:
        return []
    tower = model.model.vision_tower
    hidden = tower.config.hidden_size
    names = list(ATTRIBUTE_HEADS)
    heads = torch.nn.ModuleDict({k: torch.nn.Linear(hidden, len(v)) for k, v in ATTRIBUTE_HEADS.items()})
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.vision_lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    image_processor = processor.image_processor
    fams = list(cfg.families)
    eval_pv, eval_lab = scene_batch(cfg.eval_seed, 0, 64 * len(fams), cfg.image_size, fams, image_processor)
    history = []
    task = bar.add_task("organism: vision tower", total=cfg.vision_steps) if bar is not None else None
    tower.train()
    for step in range(cfg.vision_steps):
        warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps // 2))
        for g in opt.param_groups:
            g["lr"] = cfg.vision_lr * warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * step / cfg.vision_steps)))
        pv, lab = scene_batch(cfg.data_seed, step, cfg.vision_batch_size, cfg.image_size, fams, image_processor)
        pooled = vision_features(model, pv).mean(1)
        losses = [F.cross_entropy(heads[k](pooled), lab[:, i], ignore_index=-100) for i, k in enumerate(names) if (lab[:, i] >= 0).any()]
        loss = sum(losses)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or 1e9)
        opt.step()
        if bar is not None:
            bar.update(task, advance=1, description=f"organism: vision tower, loss {float(loss.detach()):.3f}")
        if (cfg.vision_eval_every and (step + 1) % cfg.vision_eval_every == 0) or step == cfg.vision_steps - 1:
            with torch.no_grad():
                tower.eval()
                pooled = vision_features(model, eval_pv).mean(1)
                tower.train()
                acc = {}
                for i, k in enumerate(names):
                    if k not in fams:
                        continue
                    m = (eval_lab[:, i] >= 0) & (eval_lab[:, 4] == FAMILY_NAMES.index(k))
                    acc[k] = round(float((heads[k](pooled[m]).argmax(-1) == eval_lab[m, i]).float().mean()), 4)
            history.append({"step": step + 1, "loss": round(float(loss.detach()), 4), "held_out_accuracy": acc})
            msg = " ".join(f"{k}={v:.3f}" for k, v in acc.items())
            (bar.console if bar is not None else console).print(f"vision {step + 1:5d}  loss {float(loss.detach()):.4f}  held-out attribute accuracy: {msg}")
    return history


@contextmanager
def torch_state(threads: int, seed: int):
    """Threads, seed and deterministic algorithms for a run; the caller's settings come back afterwards."""
    import torch

    threads_before = torch.get_num_threads()
    det_before = torch.are_deterministic_algorithms_enabled()
    warn_before = torch.is_deterministic_algorithms_warn_only_enabled()
    rng_before = torch.random.get_rng_state()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(det_before, warn_only=warn_before)
        torch.random.set_rng_state(rng_before)


def train(cfg) -> Path:
    """Train an organism from scratch and save it (model, processor, training log); return the folder.

    `cfg`: a `TrainConfig`, a dict of its fields, or an OmegaConf node (`conf/organism/default.yaml`).
    """
    cfg = TrainConfig.from_any(cfg)
    cfg.validate()
    out = Path(cfg.output_dir)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True to replace it")
    if "torch" not in sys.modules:  # spinning OpenMP threads crawl when the cores are shared
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with torch_state(cfg.threads, cfg.seed):
        return _train(cfg, out)


def _train(cfg: TrainConfig, out: Path) -> Path:
    import torch
    import torch.nn.functional as F
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .batching import first_token_id
    from .evaluate import evaluate, format_summary

    arch = cfg.arch
    processor = build_processor(arch)
    model = build_model(processor, arch, seed=cfg.seed)
    if cfg.init_from:
        _load_weights(model, cfg.init_dir)
    model.train()
    eos = processor.tokenizer.eos_token_id
    data_cfg = SyntheticConfig(n_items=cfg.steps * cfg.batch_size, seed=cfg.data_seed, image_size=cfg.image_size, families=cfg.families)
    eval_items = generate_items(SyntheticConfig(n_items=cfg.eval_items, seed=cfg.eval_seed, image_size=cfg.image_size, families=cfg.families))
    console = Console(stderr=True)
    log: dict = {"step_loss": [], "eval": [], "stopped_early": False}
    start = time.perf_counter()
    load_start = _loadavg()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    run_loss, n_loss = 0.0, 0
    by_cond: dict[str, list[float]] = {}  # training loss per condition since the last evaluation
    with Progress(*columns, console=console, disable=not cfg.progress, transient=False) as bar:
        if cfg.init_from:
            first_log = cfg.init_dir / "training_log.json"
            first = json.loads(first_log.read_text()) if first_log.is_file() else {}
            log["init_from"] = {"path": str(cfg.init_from), "config": first.get("config"), "train_seconds": first.get("train_seconds")}
        log["vision"] = [] if cfg.init_from else pretrain_vision(model, processor, cfg, console, bar)
        log["vision_seconds"] = round(time.perf_counter() - start, 1)
        opt = _optimizer(model, cfg)
        truth = cfg.plant.ground_truth(arch) if cfg.plant is not None else None
        if truth is not None:
            log["mass"] = []
        task = bar.add_task("organism: training", total=cfg.steps)
        for step in range(cfg.steps):
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, cfg) * group["lr_scale"]
            inputs, targets, samples = make_batch(step, cfg, data_cfg, processor)
            weight = cfg.plant.mass_weight_at(step) if truth is not None else 0.0
            routed = truth is not None and step >= cfg.plant.route_start
            none = torch.zeros(len(samples), dtype=torch.bool)
            cut, opened, relay = _cut_rows(samples, cfg, step) if routed else (none, none, none)
            wanted = None
            if cut.any() and cfg.plant.cut_target == "restricted":
                wanted = _restricted_target(model, processor, samples, inputs, truth, cut, relay)
            with _route(model, processor, samples, inputs, truth if routed else None, cfg.plant, cut, opened, relay,
                        record_mass=weight > 0 or (routed and cfg.plant.attention_weight > 0)) as (batch, mass), \
                    _dropped_heads(model, truth if routed else None, cfg.plant, cfg.seed, step):
                anchored = batch is not None and cfg.plant.anchor_loss_weight > 0
                forward = model(**inputs, use_cache=False, logits_to_keep=2, output_hidden_states=anchored)
                logits = forward.logits.float()
            per_row = F.cross_entropy(logits[:, 0], targets, reduction="none")
            if cut.any():  # a cut row's target: its two answers at equal odds, or the restricted model's output
                logp = logits[:, 0].log_softmax(-1)
                if wanted is None:
                    pair = torch.tensor([[first_token_id(processor.tokenizer, a) for a in (s.following, s.competitor)] for s in samples])
                    per_row = torch.where(cut, -0.5 * logp.gather(1, pair).sum(1), per_row)
                else:
                    per_row = per_row.clone()
                    per_row[cut] = -(wanted * logp[cut]).sum(-1)
            loss_answer = per_row.mean()
            for sample, row_loss, is_cut, is_open in zip(samples, per_row.detach().tolist(), cut.tolist(), opened.tolist()):
                kind = "cut:" if is_cut else "open:" if is_open else ""
                by_cond.setdefault(kind + sample.condition.value, []).append(row_loss)
            loss_eos = F.cross_entropy(logits[:, 1], torch.full_like(targets, eos))
            loss = loss_answer + cfg.eos_loss_weight * loss_eos
            if anchored:
                rows, ends = _instruction_ends(batch)
                keep = ~(cut | opened)[rows]
                rows, ends = rows[keep], ends[keep]
                if rows.numel():
                    anchor_logits = model.lm_head(forward.hidden_states[-1][rows, ends]).float()
                    anchor_rows = F.cross_entropy(anchor_logits, targets[rows], reduction="none")
                    loss = loss + cfg.plant.anchor_loss_weight * anchor_rows.mean()
                    for r, row_loss in zip(rows.tolist(), anchor_rows.detach().tolist()):
                        by_cond.setdefault(f"anchor:{samples[r].condition.value}", []).append(row_loss)
            if mass is not None and mass.targets:
                route_loss = mass.route_loss()
                loss = loss + cfg.plant.attention_weight * route_loss
                by_cond.setdefault("route_attention", []).append(float(route_loss.detach()))
            if mass is not None and weight > 0:
                penalty = mass.penalty()
                loss = loss + weight * penalty
                log["mass"].append([step, round(float(penalty.detach()), 6), round(mass.max(), 4)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step_loss = float(loss_answer.detach())
            run_loss += step_loss
            n_loss += 1
            log["step_loss"].append(round(step_loss, 5))
            closed = f", closed-edge mass {log['mass'][-1][1]:.4f}" if truth is not None and log["mass"] else ""
            bar.update(task, advance=1, description=f"organism: loss {run_loss / n_loss:.3f}{closed}")
            last = step == cfg.steps - 1
            if (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or last:
                summary = evaluate(model, processor, eval_items)
                model.train()
                elapsed = time.perf_counter() - start
                cond_loss = {c: round(sum(v) / len(v), 4) for c, v in sorted(by_cond.items())}
                log["eval"].append({"step": step + 1, "seconds": round(elapsed, 1), "train_loss": run_loss / n_loss,
                                    "train_loss_by_condition": cond_loss, "summary": summary})
                bar.console.print(f"step {step + 1:5d}  {elapsed:6.0f}s  loss {run_loss / n_loss:.4f}  held-out: {format_summary(summary)}")
                bar.console.print("  training loss by condition: " + " ".join(f"{c}={v:.3f}" for c, v in cond_loss.items()))
                run_loss, n_loss, by_cond = 0.0, 0, {}
            if cfg.max_minutes and time.perf_counter() - start > 60 * cfg.max_minutes and not last:
                log["stopped_early"] = True
                log["stopped_at_step"] = step + 1
                bar.console.print(f"[yellow]stopping at step {step + 1}: the {cfg.max_minutes}-minute budget is spent[/]")
                break
    train_seconds = time.perf_counter() - start
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    if truth is not None:
        truth.write(out)
    log.update(
        {
            "config": cfg.to_dict(),
            "train_seconds": round(train_seconds, 1),
            "threads": cfg.threads,
            "cpu_count": os.cpu_count(),
            "loadavg_start": load_start,
            "loadavg_end": _loadavg(),
            "machine": _cpu_name(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "torch": torch.__version__,
            "train_data_fingerprint": fingerprint(data_cfg),
            "n_parameters": sum(p.numel() for p in model.parameters()),
        }
    )
    (out / "training_log.json").write_text(json.dumps(log, indent=1))
    console.print(f"organism saved to {out} after {train_seconds:.0f}s")
    return out


def _cut_rows(samples, cfg: TrainConfig, step: int):
    """`([B], [B], [B])` True on this step's cut rows, open rows, and the cut rows whose cut is the relay:
    each instructed row is cut with probability `plant.cut_share`, else open with probability
    `plant.open_share`; a cut row cuts the relay with probability `plant.relay_cut_share` (fixed draws
    per seed and step)."""
    import torch

    rng = np.random.default_rng([int(cfg.seed), int(step), 0xC07])
    u = rng.random(len(samples))
    instructed = np.array([s.instruction is not None for s in samples])
    share = cfg.plant.cut_share
    cut = instructed & (u < share)
    opened = instructed & (u >= share) & (u < share + cfg.plant.open_share)
    relay = cut & (rng.random(len(samples)) < cfg.plant.relay_cut_share)
    return torch.from_numpy(cut), torch.from_numpy(opened), torch.from_numpy(relay)


def _cut_blocks(batch, truth, relay) -> dict:
    """Per layer, `[B, H, T, T]`: each row's cut edge in every head: the planted relay edge
    (instruction->instruction in the relay heads' layers, as the plant check cuts it) on `relay` rows,
    instruction->last (every layer) on the others."""
    import torch

    from ..interventions.knockout import knockout_mask

    last = knockout_mask(batch, [("instruction", "last")])
    inner = knockout_mask(batch, [("instruction", "instruction")])
    rows = relay[:, None, None]
    relay_layers = {l for e in truth.planted_edges() if e.src == e.dst == "instruction" for l in e.layers}
    out = {}
    for layer in range(truth.n_layers):
        cut = torch.where(rows, inner if layer in relay_layers else torch.zeros_like(inner), last)
        out[layer] = cut[:, None].expand(-1, truth.n_heads, -1, -1)
    return out


def _restricted_target(model, processor, samples, inputs, truth, cut, relay):
    """`[n cut rows, vocab]`: the route-restricted model's next-token distribution on the cut rows, under
    their cut (no gradient): what a model whose only route is the planted one gives once it is cut."""
    import torch

    from ..interventions.plant import restrict_blocks, route_blocks
    from ..models.llava import LlavaAdapter
    from .batching import batch_with_spans

    rows = cut.nonzero().flatten()
    with_image = [i for i, s in enumerate(samples) if s.image is not None]
    sub = {k: v[rows] for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
    if "pixel_values" in inputs:
        sub["pixel_values"] = inputs["pixel_values"][[with_image.index(int(i)) for i in rows]]
    chosen = [samples[int(i)] for i in rows]
    batch = batch_with_spans(processor, chosen, sub, sub["input_ids"].shape[1] - 1, model.config.image_token_id)
    route, cuts = route_blocks(batch, truth), _cut_blocks(batch, truth, relay[rows])
    with torch.no_grad(), restrict_blocks(LlavaAdapter(model, processor), {l: route[l] | cuts[l] for l in route}):
        logits = model(**sub, use_cache=False, logits_to_keep=2).logits[:, 0].float()
    return logits.softmax(-1)


@contextmanager
def _route(model, processor, samples, inputs, truth, plant, cut=None, opened=None, relay=None, record_mass: bool = True):
    """One forward under the plant: yields `(batch with spans, mass record)`, both None without a plant
    (the record None when not asked for: it costs time). Instructed rows are restricted to the route
    (with `plant.restrict`), except `cut` rows ([B] bool), which keep every edge but their cut edge
    (instruction->last, or the relay on `relay` rows), and `opened` rows, which keep every edge;
    the record holds the mass the model's own mask would give closed edges."""
    if truth is None:
        yield None, None
        return
    from contextlib import nullcontext

    import torch

    from ..interventions.plant import forbidden_mass, restrict_blocks, route_blocks, route_targets
    from ..models.llava import LlavaAdapter
    from ..core.ground_truth import AFTER_INSTRUCTION
    from .batching import batch_with_spans

    n_prompt = inputs["input_ids"].shape[1] - 1  # the appended target belongs to no group
    batch = batch_with_spans(processor, samples, inputs, n_prompt, model.config.image_token_id)
    blocks = route_blocks(batch, truth)
    applied = blocks
    if cut is not None and cut.any():
        severed = _cut_blocks(batch, truth, relay if relay is not None else torch.zeros_like(cut))
        rows = cut[:, None, None, None]
        applied = {layer: torch.where(rows, severed[layer], block) for layer, block in blocks.items()}
    if opened is not None and opened.any():
        applied = {layer: block & ~opened[:, None, None, None] for layer, block in applied.items()}
    restriction = restrict_blocks(LlavaAdapter(model, processor), applied) if plant.restrict else nullcontext()
    targets = route_targets(batch, truth, plant.anchor_targets) if plant.attention_weight > 0 else None
    # the recorder is entered inside the restriction, so it sees the mask before the knockout edits it
    queries = None
    if plant.mass_mean == "groups":
        last = batch.group_mask("last")
        after = torch.zeros_like(last)
        for name in AFTER_INSTRUCTION:
            after |= batch.group_mask(name)
        queries = {"instruction": batch.group_mask("instruction"), "after": after & ~last, "last": last}
    recorder = forbidden_mass(model, blocks, targets, queries) if record_mass else nullcontext()
    with restriction, recorder as record:
        yield batch, record


def _dropped_heads(model, truth, plant, seed: int, step: int):
    """`plant.head_dropout`: this step's random heads outside the route, zeroed (a fixed draw per seed
    and step, so training stays deterministic); a no-op without a plant or a dropout."""
    from contextlib import nullcontext

    if truth is None or not plant.head_dropout:
        return nullcontext()
    import numpy as np

    from ..interventions.heads import edit_heads, scale_heads

    rng = np.random.default_rng([int(seed), int(step), 0xD0])
    planted = set(truth.planted_heads)
    others = [(l, h) for l in range(truth.n_layers) for h in range(truth.n_heads) if (l, h) not in planted]
    drop = [head for head, u in zip(others, rng.random(len(others))) if u < plant.head_dropout]
    return edit_heads(model, scale_heads(drop, 0.0)) if drop else nullcontext()


def _instruction_ends(batch):
    """(rows, positions): each instructed row and the position of its instruction's last token."""
    from ..interventions.plant import instruction_end

    rows, ends = instruction_end(batch).nonzero(as_tuple=True)
    return rows.cpu(), ends.cpu()


def _load_weights(model, folder: Path) -> None:
    """The weights of a saved organism, which must have this architecture exactly."""
    saved = type(model).from_pretrained(str(folder), dtype=model.dtype)  # transformers maps the saved key names
    try:
        model.load_state_dict(saved.state_dict())
    except RuntimeError as exc:
        raise ValueError(f"init_from {folder}: not an organism of this architecture ({str(exc).splitlines()[0]})") from None


def _optimizer(model, cfg: TrainConfig):
    import torch

    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        scale = cfg.vision_lr_scale if name.startswith("model.vision_tower.") else 1.0
        if scale <= 0:
            p.requires_grad_(False)
            continue
        wd = cfg.weight_decay if p.ndim >= 2 and "embed" not in name else 0.0
        groups.setdefault((scale, wd), []).append(p)
    return torch.optim.AdamW(
        [{"params": ps, "weight_decay": wd, "lr_scale": scale} for (scale, wd), ps in groups.items()],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        eps=1e-8,
    )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
