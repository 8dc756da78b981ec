"""Interventions on a loaded model, each a context manager whose hooks are removed on exit (even on
error): per-head edits at the attention output projection's input, attention-edge knockout through
transformers' attention interface, a residual-stream logit lens by component, and prefix reuse (resuming a
recorded pass at any decoder layer, variants stacked along the batch) for sweeps over many of them."""

from .heads import (
    HeadEdit,
    edit_heads,
    head_outputs,
    mean_ablate_heads,
    mean_head_outputs,
    record_heads,
    scale_heads,
    steer_heads,
    use_head_set,
)
from .knockout import default_window_size, knock_out, knock_out_rows, knockout_mask, layer_window
from .lens import (
    SUBLAYERS,
    Contributions,
    ResidualTrace,
    capture_residuals,
    component_contributions,
    contributions_from_trace,
    lens_logits,
    record_residuals,
    resolve_positions,
    stream_scores,
)

__all__ = [
    "HeadEdit",
    "edit_heads",
    "head_outputs",
    "mean_ablate_heads",
    "mean_head_outputs",
    "record_heads",
    "scale_heads",
    "steer_heads",
    "use_head_set",
    "default_window_size",
    "knock_out",
    "knock_out_rows",
    "layer_window",
    "knockout_mask",
    "SUBLAYERS",
    "Contributions",
    "ResidualTrace",
    "capture_residuals",
    "component_contributions",
    "contributions_from_trace",
    "lens_logits",
    "record_residuals",
    "resolve_positions",
    "stream_scores",
]
