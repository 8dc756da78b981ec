"""Whether a model the package has no family file for is measured correctly, checked on one batch.

Introspection finds where a model's attention and MLP write, its final norm and its unembedding, but
not what else a decoder layer may do to the residual stream. Gemma 4's layers, for example, add a
per-layer input after the MLP and scale the whole residual by a learnt scalar. Other models soft-cap
their logits after the unembedding. The lens and the decomposition would then not add up, and every
number built on them would be wrong without any error. Three identities the family tests assert for
every supported family are checked on the model itself instead:
- every layer's output is its input plus what its attention and MLP wrote (and what the model writes
  between layers, where the adapter declares it);
- the lens at the final residual is the model's own logits;
- a pass resumed at a layer from the recorded pass gives the model's own logits (prefix reuse, which
  every sweep uses, runs the model's layers with the arguments the model gave them).
A model that fails one is refused in one line that names it.
"""

from __future__ import annotations

import torch

from ..core.errors import UserError
from ..models.adapter import Batch
from .lens import capture_residuals, lens_logits
from .prefix import PrefixRun


def _gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """How far `a` is from `b`, relative to `b`'s largest entry."""
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


@torch.no_grad()
def check_measurable(adapter, batch: Batch, tolerance: float | None = None) -> None:
    """Raise `UserError` (one line) unless the residual stream of `batch` is what the lens and the
    decomposition read, and prefix reuse reproduces the forward pass. `tolerance`: relative, by default
    1e-4 in float32 and 2e-2 in half precision."""
    if tolerance is None:
        tolerance = 1e-4 if adapter.model.dtype == torch.float32 else 2e-2
    label = f"model {adapter.name!r} ({adapter.model.config.model_type}, no family file)"
    trace = capture_residuals(adapter, batch, "last")
    n_layers = trace.n_layers
    after = trace.out + (trace.gap if trace.gap is not None else 0)
    following = torch.cat([trace.pre[1:], trace.final[None]])
    for layer in range(n_layers):
        gap = _gap(after[layer], following[layer])
        if gap > tolerance:
            raise UserError(f"{label}: decoder layer {layer} changes the residual stream besides its attention and MLP "
                            f"(its output differs from input + attention + MLP by {gap:.2g} of its size: a scale or another "
                            "writer inside the layer), so the lens and the decomposition would not add up; not supported")
    gap = _gap(lens_logits(adapter, trace.final), trace.logits)
    if gap > tolerance:
        raise UserError(f"{label}: its logits are not the final norm and unembedding of the last residual (they differ "
                        f"by {gap:.2g} of their size: soft-capping or another step after the unembedding), so the logit "
                        "lens would not end at the model's own logits; not supported")
    run = PrefixRun(adapter, batch)
    for layer, hidden in run.states():
        if layer in (1, n_layers // 2, n_layers - 1):
            gap = _gap(run.resume(layer, hidden), run.logits)
            if gap > tolerance:
                raise UserError(f"{label}: a pass resumed at decoder layer {layer} with the arguments the model gave "
                                f"that layer does not give the model's logits (they differ by {gap:.2g} of their size: "
                                "the layers depend on something besides their arguments), so no sweep would be exact; "
                                "not supported")
