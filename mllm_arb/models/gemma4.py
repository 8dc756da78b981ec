"""Gemma 4: Gemma 3's sandwich norms and bidirectional image attention, plus writers of its own.

Each decoder layer adds a per-layer input after its MLP (a gated projection of a per-token embedding,
written through `post_per_layer_input_norm`: its own lens component) and then multiplies its whole output
by a learnt `layer_scalar` (reported as the component "layer_scale": (scale - 1) times the layer's sum).
Full-attention layers have wider heads than sliding ones (heads are edited at each layer's own width);
the last layers may reuse earlier layers' keys and values (`num_kv_shared_layers`), passed between layers
in a mapping that every resumed pass copies; the logits are soft-capped, and the lens caps them the same way.
Suffix, last-position and paired sweeps do not apply (the layers pass that mapping along the sequence):
every sweep resumes whole passes, exact and slower.
"""

from .gemma3 import Gemma3Adapter


class Gemma4Adapter(Gemma3Adapter):
    family = "gemma4"
    model_types = ("gemma4",)
    example_checkpoint = "google/gemma-4-e4b-it"
    quirks = ("per-layer input written after the MLP ('per_layer_input') and a learnt scale of each layer's output "
              "('layer_scale'): their own lens components; sandwich norms; wider heads in full-attention layers; "
              "keys and values shared by the last layers; soft-capped logits; bidirectional attention inside an image; "
              "sweeps resume whole passes (no suffix reuse)")
    late_writers = (("post_per_layer_input_norm", "per_layer_input"),)
    layer_scale = "layer_scalar"
    layer_state = "shared_kv_states"
