"""The model adapter: one object that knows how to load a family, turn samples into model inputs with
exact token-group spans, and where the decoder's parts (layers, heads, norm, unembedding) live.

Family files subclass `ModelAdapter` and override only what differs (a table of class attributes,
occasionally one method). Everything else is found by introspection, never by hard-coded paths.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..core.errors import UserError
from ..core.heads_file import attention_heads
from ..core.prompt import GROUPS, chat_messages, token_groups
from ..core.records import Sample

#: the lens component of a layer scale (`ModelAdapter.layer_scale`)
LAYER_SCALE = "layer_scale"


@dataclass
class Batch:
    """Model inputs for a list of samples, with per-row token-group positions (padding included)."""

    samples: list[Sample]
    inputs: dict[str, torch.Tensor]
    spans: list[dict[str, list[int]]]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def last(self) -> list[int]:
        return [s["last"][0] for s in self.spans]

    def group_mask(self, group: str) -> torch.Tensor:
        """[B, T] boolean mask of the positions of `group` in each row."""
        ids = self.inputs["input_ids"]
        mask = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
        for row, spans in enumerate(self.spans):
            if spans.get(group):
                mask[row, spans[group]] = True
        return mask


@dataclass(frozen=True)
class DecoderParts:
    """Where the text decoder's parts live in a loaded model."""

    layers: nn.ModuleList
    #: the module that owns the layers and runs the loop over them (where between-layer writers live)
    text_model: nn.Module
    final_norm: nn.Module
    unembed: nn.Module
    n_heads: int
    #: each layer's head width (Gemma 4's full-attention layers have wider heads than its sliding ones)
    head_dims: tuple[int, ...]
    #: the model's own soft cap on its output logits (`cap * tanh(logits / cap)`; Gemma 2 and 4), or None
    softcap: float | None = None
    #: layers whose token mixer is linear attention (`linear_attn`: Qwen3.5's gated DeltaNet), not `self_attn`
    linear: frozenset[int] = frozenset()
    #: the layers' MLP submodule (`feed_forward` in Llama 4)
    mlp_name: str = "mlp"

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def head_dim(self, layer: int) -> int:
        return self.head_dims[layer]

    @property
    def head_layers(self) -> tuple[int, ...]:
        """The layers with attention heads (all of them but the linear-attention ones)."""
        return tuple(l for l in range(self.n_layers) if l not in self.linear)

    def heads(self) -> list[tuple[int, int]]:
        """Every attention head as (layer, head), layer by layer: what head ranking and head sets range over."""
        return attention_heads(self.n_layers, self.n_heads, self.linear)

    def read(self, resid: torch.Tensor) -> torch.Tensor:
        """Next-token logits of residual vectors (`[..., d]`): the final norm, the unembedding and the
        model's soft cap, as the model computes its own logits."""
        logits = self.unembed(self.final_norm(resid))
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def o_proj(self, layer: int) -> nn.Linear:
        if layer in self.linear:
            raise ValueError(f"decoder layer {layer} mixes by linear attention: it has no attention heads")
        return self.layers[layer].self_attn.o_proj

    def attn(self, layer: int) -> nn.Module:
        """The layer's token mixer: its attention, or its linear attention."""
        return self.layers[layer].linear_attn if layer in self.linear else self.layers[layer].self_attn

    def mlp(self, layer: int) -> nn.Module:
        return getattr(self.layers[layer], self.mlp_name)


class ModelAdapter:
    """Shared behaviour; a family file declares what differs as class attributes."""

    family: ClassVar[str] = "base"
    model_types: ClassVar[tuple[str, ...]] = ()
    #: whether the processor wants images nested per sample (`[[img], [img]]`)
    nest_images: ClassVar[bool] = False
    #: a real checkpoint people use with this family, for `mllm-arb models`
    example_checkpoint: ClassVar[str] = ""
    #: attribute names of the image token id in the model config, first found wins
    image_token_attrs: ClassVar[tuple[str, ...]] = ("image_token_id", "image_token_index")
    #: residual writers of a layer where they are not its token mixer and MLP themselves (Gemma's sandwich
    #: norms write through their post-norms); empty: the mixer and MLP that introspection found
    attn_output_module: ClassVar[str] = ""
    mlp_output_module: ClassVar[str] = ""
    #: position ids counted from the attention mask, as generation counts them, so that a left-padded
    #: row's tokens start at 0 and a sample scores the same alone and in a padded batch; off for families
    #: whose model derives its own positions from the batch (Qwen2-VL's 3-D rotary)
    positions_from_mask: ClassVar[bool] = True
    #: what an analysis must know about the family, in one line (`mllm-arb models`)
    quirks: ClassVar[str] = ""
    #: a residual writer between decoder layers besides attention and MLP (Qwen3-VL's DeepStack): the
    #: name of the text model's method the model calls after a layer as `(hidden, positions, values)`,
    #: writing `values` at the `[B, T]` positions in place, and the component name the lens reports
    gap_writer: ClassVar[str] = ""
    gap_component: ClassVar[str] = ""
    #: image positions attend to later positions of the same image (Gemma 3's bidirectional image attention)
    image_sees_ahead: ClassVar[bool] = False
    #: residual writers inside a decoder layer after its MLP (Gemma 4's per-layer input), in the order the
    #: layer adds them: (the layer's submodule whose output is the write, the component name the lens reports)
    late_writers: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: a buffer of each decoder layer that scales the layer's whole output (Gemma 4's `layer_scalar`); the
    #: lens reports what the scaling changes, (scale - 1) × the layer's sum, as the component "layer_scale"
    layer_scale: ClassVar[str] = ""
    #: a decoder-layer argument that layers write into as the pass goes (Gemma 4's `shared_kv_states`, the keys
    #: and values later layers reuse): every resumed pass gets its own copy, and since it runs along the whole
    #: sequence, no sweep can cut the pass to a suffix (suffix, last-position and paired sweeps do not apply;
    #: found from the layers' arguments in a real run, declared here for planning)
    layer_state: ClassVar[str] = ""
    #: extra arguments of the chat template (a thinking model's thought closed empty, so that the answer is
    #: the next token the prompt asks for)
    template_kwargs: ClassVar[dict] = {}
    #: whether a pass that reads only the final position may run the last layer's MLP there alone; not where the
    #: layer reshapes the MLP's output to its own input's shape (Llama 4's MoE returns rows flattened)
    narrow_last_mlp: ClassVar[bool] = True
    #: decoder layer types besides attention that the family's knockout and head edits are defined for
    #: ("linear_attention": Qwen3.5's gated DeltaNet); a model with any other such layer is refused at load
    mixers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module, processor, name: str = "") -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.name = name or getattr(model.config, "_name_or_path", "") or self.family
        self.parts = find_decoder_parts(model)
        #: the declared writers after the MLP that this model's layers have (a Gemma 4 without per-layer inputs has none)
        self.late = tuple((module, name) for module, name in self.late_writers if hasattr(self.parts.layers[0], module))
        self.image_token_id = self._image_token_id()
        #: when set, passes are counted instead of run (`models/ledger.py`, `mllm-arb plan`)
        self.ledger = None

    # ---------------------------------------------------------------- introspection
    def _image_token_id(self) -> int:
        cfg = self.model.config
        for attr in self.image_token_attrs:
            value = getattr(cfg, attr, None)
            if value is not None:
                return int(value)
        raise UserError(f"{self.family}: the model config names no image token id ({', '.join(self.image_token_attrs)})")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def attn_writer(self, layer: int) -> nn.Module:
        """The module whose output is the attention sublayer's write into the residual stream."""
        if not self.attn_output_module:
            return self.parts.attn(layer)
        return getattr(self.parts.layers[layer], self.attn_output_module)

    def mlp_writer(self, layer: int) -> nn.Module:
        if not self.mlp_output_module:
            return self.parts.mlp(layer)
        return getattr(self.parts.layers[layer], self.mlp_output_module)

    def components(self) -> tuple[str, ...]:
        """The residual writers of each decoder layer, in the order they write: attention, MLP, the
        family's writers after the MLP, its layer scale, then what the model writes between layers."""
        late = tuple(name for _, name in self.late) + ((LAYER_SCALE,) if self.layer_scale else ())
        return ("attn", "mlp") + late + ((self.gap_component or self.gap_writer,) if self.gap_writer else ())

    # ---------------------------------------------------------------- prompts
    def prompt_text(self, sample: Sample) -> str:
        return self.processor.apply_chat_template(chat_messages(sample), tokenize=False, add_generation_prompt=True,
                                                  **self.template_kwargs)

    def _images_arg(self, samples: Sequence[Sample]):
        images = [s.image.convert("RGB") for s in samples]
        return [[im] for im in images] if self.nest_images else images

    def adds_bos(self, prompt: str) -> bool:
        """Whether tokenizing adds special tokens: not when the template already wrote the BOS
        (the rule transformers' own chat pipeline follows, so we see what users' code sees)."""
        bos = self.tokenizer.bos_token
        return not (bos and prompt.startswith(bos))

    def processor_call(self, prompts: list[str], samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
        kwargs = {"text": prompts, "return_tensors": "pt", "padding": True, "add_special_tokens": self.adds_bos(prompts[0])}
        if samples[0].image is not None:
            kwargs["images"] = self._images_arg(samples)
        return dict(self.processor(**kwargs))

    def build_batch(self, samples: Sequence[Sample]) -> Batch:
        """Render samples, run the processor once, and derive each row's token-group positions."""
        samples = list(samples)
        if not samples:
            raise UserError("cannot build a batch from no samples")
        if len({s.image is None for s in samples}) > 1:
            raise ValueError("a batch must not mix samples with and without an image")
        prompts = [self.prompt_text(s) for s in samples]
        try:
            inputs = self.processor_call(prompts, samples)
        except (OSError, ValueError) as exc:  # PIL decoding errors are OSError subclasses
            raise UserError(f"the processor rejected a batch ({samples[0].item_id}, ...): {exc}") from exc
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask", torch.ones_like(ids))
        spans = []
        for row, (sample, prompt) in enumerate(zip(samples, prompts)):
            positions = mask[row].nonzero().flatten()
            start, end = int(positions[0]), int(positions[-1]) + 1
            row_spans = token_groups(
                self.tokenizer, prompt, sample, ids[row, start:end].tolist(), self.image_token_id, self.adds_bos(prompt)
            )
            spans.append({g: [p + start for p in pos] for g, pos in row_spans.items()})
        if self.positions_from_mask and "attention_mask" in inputs:
            inputs["position_ids"] = (inputs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
        moved = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        if "pixel_values" in moved and moved["pixel_values"].is_floating_point():
            moved["pixel_values"] = moved["pixel_values"].to(self.model.dtype)
        return Batch(samples=samples, inputs=moved, spans=spans)

    # ---------------------------------------------------------------- running
    def last_logits(self, batch: Batch, grad: bool = False) -> torch.Tensor:
        """[B, V] next-token logits at each row's last prompt position (`grad`: with their autograd graph)."""
        if self.ledger is not None:
            return self.ledger.forward(self, batch)
        with torch.set_grad_enabled(grad):
            out = self.model(**batch.inputs, use_cache=False)
        rows = torch.arange(len(batch), device=out.logits.device)
        return out.logits[rows, torch.tensor(batch.last, device=out.logits.device)].float()


# -------------------------------------------------------------------- introspection
def find_decoder_parts(model: nn.Module) -> DecoderParts:
    """Find the text decoder's layer list, final norm and unembedding by shape, not by path.

    Vision towers also hold lists of layers with `self_attn`; only the text decoder's attention has an
    `o_proj`, and the longest such list under a module that also owns a `norm` is the decoder. Some of its
    layers may mix by linear attention instead (`linear_attn` with an `out_proj`: Qwen3.5), not all.
    """

    def attends(layer) -> bool:
        return hasattr(getattr(layer, "self_attn", None), "o_proj")

    def mixes(layer) -> bool:
        mixer = attends(layer) or hasattr(getattr(layer, "linear_attn", None), "out_proj")
        return mixer and (hasattr(layer, "mlp") or hasattr(layer, "feed_forward"))

    candidates = []
    for name, module in model.named_modules():
        for child_name, child in module.named_children():
            if isinstance(child, nn.ModuleList) and len(child) and all(mixes(l) for l in child) and any(attends(l) for l in child):
                if hasattr(module, "norm"):
                    candidates.append((len(child), name, module, child))
    if not candidates:
        raise UserError(f"{type(model).__name__}: no text decoder layers with self_attn.o_proj found")
    _, _, owner, layers = max(candidates, key=lambda c: c[0])
    unembed = model.get_output_embeddings()
    if unembed is None:
        raise UserError(f"{type(model).__name__}: the model has no output embedding (lm_head)")
    text_cfg = model.config.get_text_config()
    n_heads = int(text_cfg.num_attention_heads)
    head_dims = []
    linear = frozenset(i for i, layer in enumerate(layers) if not attends(layer))
    for index, layer in enumerate(layers):
        if index in linear:
            head_dims.append(0)  # no attention heads
            continue
        o_in = layer.self_attn.o_proj.in_features
        head_dim = int(getattr(layer.self_attn, "head_dim", None) or getattr(text_cfg, "head_dim", None) or o_in // n_heads)
        if n_heads * head_dim != o_in:
            raise UserError(f"decoder layer {index}: o_proj takes {o_in} features, not heads × head_dim = {n_heads} × {head_dim}")
        head_dims.append(head_dim)
    softcap = getattr(text_cfg, "final_logit_softcapping", None)
    return DecoderParts(layers=layers, text_model=owner, final_norm=owner.norm, unembed=unembed, n_heads=n_heads,
                        head_dims=tuple(head_dims), softcap=float(softcap) if softcap else None, linear=linear,
                        mlp_name="mlp" if hasattr(layers[0], "mlp") else "feed_forward")

