"""Check a planted organism with the toolkit's own interventions, under the ordinary causal mask:

- the planted edges, knocked out (every head) in their layers, destroy following in the setting that
  needs them (in the plain model, and in the route-restricted one: whether the route itself needs them);
- the edges that carry the instruction (the relay, instruction->last), cut: does the answer still
  depend on the instruction (the image answer's log-odds gap between the two instructions, and the
  share of items answered alike under both)?
- every closed edge, knocked out in the layers where it is closed, moves the mean log-odds by little
  (the plant's bar: less than 0.1);
- the route-restricted model (every closed edge knocked out at once) agrees with the plain model;
- blocking the planted heads, against random head sets of the same size, on the settings and controls.

The numbers go into the planted organism's model card (`python -m mllm_arb.organism --config anchor --ship`).
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

#: the plant's bar for a closed edge (mean change in following log-odds)
CLOSED_EDGE_BAR = 0.1
SETTINGS = ("text_following", "vision_following")
CONTROLS = ("image_only", "text_only", "consistent", "no_instruction")


def _edge_block(batch, src: str, dst: str) -> torch.Tensor:
    """Group knockout of `src -> dst`; `system` as a target means template text other than the last position."""
    from ..interventions.knockout import knockout_mask

    block = knockout_mask(batch, [(src, dst)])
    if dst == "system":
        block &= ~batch.group_mask("last")[:, :, None]
    return block


def _log_odds(adapter, preps, context=None) -> torch.Tensor:
    from ..pipeline.heads.methods import log_odds_under

    out = []
    for p in preps:
        if context is None:
            out.append(log_odds_under(adapter, p))
        else:
            with context(p):
                out.append(log_odds_under(adapter, p))
    return torch.cat(out)


def _summary(base: torch.Tensor, after: torch.Tensor) -> dict:
    d = after - base
    return {"mean_delta": float(d.mean()), "mean_abs_delta": float(d.abs().mean()), "mfr_before": float((base > 0).float().mean()),
            "mfr_after": float((after > 0).float().mean())}


def _instruction_effect(image_side: dict, key: str) -> dict:
    """How much the instruction moves the answer: the mean over items of the image answer's log-odds under
    the vision instruction minus under the text instruction, and the share of items answered alike."""
    vision, text = image_side["vision_following"][key], image_side["text_following"][key]
    return {"mean_image_log_odds_gap": float((vision - text).mean()), "same_answer": float(((vision > 0) == (text > 0)).float().mean())}


@torch.no_grad()
def check_plant(path: str | Path, n_items: int = 200, seed: int = 1000, batch_size: int = 50, n_random: int = 20) -> dict:
    from ..pipeline.heads.methods import prepare
    from ..core.records import Condition
    from ..data.synthetic import SyntheticConfig, generate_items
    from ..core.prompt import render_all
    from ..interventions.heads import edit_heads, scale_heads
    from ..interventions.knockout import knock_out, knock_out_rows
    from ..interventions.plant import restrict_to_route
    from ..models.loading import load_adapter
    from ..core.ground_truth import load

    adapter = load_adapter(str(path))
    truth = load(path)
    if truth is None:
        raise ValueError(f"{path} ships no ground_truth.json")
    items = generate_items(SyntheticConfig(n_items=n_items, seed=seed))
    n_all = truth.n_layers * truth.n_heads
    rng = np.random.default_rng(seed)
    planted = list(truth.planted_heads)
    randoms = [[divmod(int(i), truth.n_heads) for i in rng.choice(n_all, len(planted), replace=False)] for _ in range(n_random)]
    out: dict = {"n_items": n_items, "seed": seed, "n_random": n_random, "planted": {}, "closed": {}, "restricted": {}, "heads": {}}

    def blocked(heads):
        return lambda p: edit_heads(adapter, scale_heads(heads, 0.0))

    def cut(e, restricted: bool = False):
        def context(p):
            stack = ExitStack()
            if restricted:
                stack.enter_context(restrict_to_route(adapter, p.batch, truth))
            stack.enter_context(knock_out(adapter, p.batch, [(e.src, e.dst)], e.layers))
            return stack
        return context

    # image-answer log-odds per setting, intact and with each planted edge cut (the items are the same rows)
    image_side: dict[str, dict[str, torch.Tensor]] = {}
    for name in (*SETTINGS, *CONTROLS):
        preps = prepare(adapter, render_all(items, [Condition(name)]), batch_size)
        base = _log_odds(adapter, preps)
        if name in SETTINGS:
            sign = 1.0 if name == "vision_following" else -1.0
            image_side[name] = {"intact": sign * base}
            out["planted"][name] = {}
            for e in truth.planted_edges():
                if e.governs not in ("both", name):
                    continue
                after = _log_odds(adapter, preps, cut(e))
                image_side[name][e.name] = sign * after
                restricted = _log_odds(adapter, preps, cut(e, restricted=True))
                out["planted"][name][e.name] = {"layers": list(e.layers), **_summary(base, after),
                                                "restricted_mfr_after": float((restricted > 0).float().mean())}
            out["closed"][name] = {
                f"{e.name}@{e.layers[0]}-{e.layers[-1]}": _summary(
                    base, _log_odds(adapter, preps, lambda p, e=e: knock_out_rows(adapter, _edge_block(p.batch, e.src, e.dst), [set(e.layers)] * len(p.batch)))
                )
                for e in truth.forbidden_edges()
            }
            out["restricted"][name] = _summary(base, _log_odds(adapter, preps, lambda p: restrict_to_route(adapter, p.batch, truth)))
        top = _log_odds(adapter, preps, blocked(planted))
        rand = [float((_log_odds(adapter, preps, blocked(r)) > 0).float().mean()) for r in randoms]
        out["heads"][name] = {"mfr_before": float((base > 0).float().mean()), "mfr_planted_blocked": float((top > 0).float().mean()),
                              "mfr_random_blocked_mean": float(np.mean(rand)), "mfr_random_blocked_range": [min(rand), max(rand)]}
    # an edge that carries the instruction (governs both settings): cut, does the answer still depend on it?
    out["instruction_effect"] = {}
    for e in truth.planted_edges():
        if e.governs == "both":
            out["instruction_effect"][e.name] = {"layers": list(e.layers), "intact": _instruction_effect(image_side, "intact"),
                                                 "cut": _instruction_effect(image_side, e.name)}
    worst = max((abs(v["mean_delta"]), s, k) for s, edges in out["closed"].items() for k, v in edges.items())
    out["closed_worst"] = {"setting": worst[1], "edge": worst[2], "abs_mean_delta": worst[0], "bar": CLOSED_EDGE_BAR,
                           "all_below_bar": worst[0] < CLOSED_EDGE_BAR}
    return out
