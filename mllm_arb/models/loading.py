"""Load any supported model into its adapter: a local directory, a cached hub id, the shipped
organism, or a tiny random-weight model built on the fly (`tiny:<family>`)."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch

from ..core.errors import UserError
from .adapter import ModelAdapter
from .gemma3 import Gemma3Adapter
from .gemma4 import Gemma4Adapter
from .glm4v import Glm4vAdapter
from .idefics3 import Idefics3Adapter
from .internvl import InternVLAdapter
from .llava import LlavaAdapter
from .llava_next import LlavaNextAdapter
from .llama4 import Llama4Adapter
from .llava_onevision import LlavaOnevisionAdapter
from .mistral3 import Mistral3Adapter
from .molmo2 import Molmo2Adapter
from .qwen2_vl import Qwen2_5_VLAdapter, Qwen2VLAdapter
from .qwen3_5 import Qwen3_5Adapter
from .qwen3_vl import Qwen3VLAdapter

ADAPTERS: tuple[type[ModelAdapter], ...] = (
    LlavaAdapter,
    LlavaNextAdapter,
    LlavaOnevisionAdapter,
    Qwen2VLAdapter,
    Qwen2_5_VLAdapter,
    Qwen3VLAdapter,
    Qwen3_5Adapter,
    Mistral3Adapter,
    Llama4Adapter,
    Molmo2Adapter,
    Glm4vAdapter,
    Idefics3Adapter,
    Gemma3Adapter,
    Gemma4Adapter,
    InternVLAdapter,
)
TINY_PREFIX = "tiny:"
#: decoder layer types whose token mixer is not attention (Qwen3.5's linear attention): an attention mask
#: cannot knock an edge out there and a head is not a slice of an attention output, so only a family file
#: that declares them (`ModelAdapter.mixers`, its knockout tested against the recurrence) loads them
UNDEFINED_LAYER_TYPES = ("linear_attention",)
log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "auto": "auto"}
#: attention implementations the knockout and head hooks go through (transformers' attention interface)
ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


def check_device(device: str) -> None:
    """A device this machine has, before any weights load."""
    if device in ("cpu", "auto"):
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"model.device={device!r} is not a device; use cpu, cuda, cuda:N, mps or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"model.device={device}: this machine has no CUDA GPU that torch can use; set model.device=cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"model.device={device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"model.device={device}: MPS is not available here; set model.device=cpu")
    elif dev.type not in ("cuda", "mps"):
        raise UserError(f"model.device={device!r}: use cpu, cuda, cuda:N, mps or auto")


def check_loading_info(source: str, info: dict) -> None:
    """Refuse a checkpoint whose weights do not match its class: transformers would initialise a missing
    tensor at random (and only warn), and every number computed afterwards would be meaningless."""
    for key, what in (("missing_keys", "lacks"), ("unexpected_keys", "has unexpected"), ("mismatched_keys", "has wrongly shaped")):
        names = sorted(str(k if isinstance(k, str) else k[0]) for k in info.get(key) or ())
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            raise UserError(f"model {source!r} {what} weights: {', '.join(names[:3])}{more}; the checkpoint is damaged or "
                            "does not match its config.json")


class IntrospectedAdapter(ModelAdapter):
    """A model type with no family file: everything the stages need is found by introspection (the text
    decoder's layers with their attention output projections, the final norm, the unembedding, the
    image token id), and nothing is declared. Loading it says so once (`load_adapter`)."""

    family = "introspected"
    quirks = "any other image-text-to-text model type: layers, output projections, final norm and unembedding found by introspection; loads with a warning, and is refused unless its residual stream, lens and resumed passes check out on two prompts"


def adapter_for(model_type: str) -> type[ModelAdapter]:
    """The family adapter of `model_type`, or `IntrospectedAdapter` for a type no family file declares."""
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    return IntrospectedAdapter


def supported_types() -> str:
    return ", ".join(t for a in ADAPTERS for t in a.model_types)


def tiny_cache_dir() -> Path:
    return Path(os.environ.get("MLLM_ARB_CACHE", Path.home() / ".cache" / "mllm_arb")) / "tiny"


def materialise(path: str | Path | None) -> str:
    """Turn a model reference into something `from_pretrained` can read."""
    if path is None or str(path) in ("", "organism"):
        from ..core.paths import checkpoint_path

        return str(checkpoint_path())
    if str(path) == "organism_anchor":
        from ..core.paths import anchor_path

        return str(anchor_path())
    path = str(path)
    if path.startswith(TINY_PREFIX):
        from .tiny import TINY_FAMILIES, save_tiny_model

        family = path[len(TINY_PREFIX) :]
        if family not in TINY_FAMILIES:
            raise UserError(f"no tiny model for {family!r}; tiny families: {', '.join(TINY_FAMILIES)}")
        target = tiny_cache_dir() / family
        if not (target / "config.json").exists():
            save_tiny_model(family, target)
        return str(target)
    local = Path(path).expanduser()
    if local.exists():
        if not (local / "config.json").exists():
            raise UserError(f"model directory {local} has no config.json")
        return str(local)
    if path.startswith((".", "/", "~")):
        raise UserError(f"model path {path} does not exist")
    return path  # a hub id: transformers resolves it from the local cache (offline)


def _checked_config(source: str, family: str | None, attn_implementation: str):
    """`source`'s config.json and the adapter class of its family, checked (with the attention
    implementation asked for) before any weights load."""
    if attn_implementation not in ATTENTION:
        raise UserError(f"model.attn_implementation={attn_implementation!r}: choose one of {', '.join(ATTENTION)}")
    from transformers import AutoConfig, AutoModelForImageTextToText

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model {source!r}: not a local directory and not in the Hugging Face cache ({_first_line(exc)})") from exc
    except Exception as exc:  # huggingface_hub's strict config validation has its own error types
        if not type(exc).__name__.startswith("StrictDataclass"):
            raise
        raise UserError(f"model {source!r} has an impossible config.json: {_last_line(exc)}") from exc
    adapter_cls = adapter_for(config.model_type)
    if adapter_cls is IntrospectedAdapter and type(config) not in AutoModelForImageTextToText._model_mapping:
        raise UserError(f"unsupported architecture {config.model_type!r}: not an image-text-to-text model (transformers has no "
                        f"AutoModelForImageTextToText class for it); supported model types: {supported_types()}")
    mixers = [t for t in (getattr(config.get_text_config(), "layer_types", None) or [])
              if t in UNDEFINED_LAYER_TYPES and t not in adapter_cls.mixers]
    if mixers:
        raise UserError(f"model {source!r} ({config.model_type}) has {len(mixers)} {mixers[0]} layers (gated DeltaNet and the like): "
                        "knockout and head edits are defined there only for the families that declare them "
                        f"({', '.join(a.family for a in ADAPTERS if a.mixers)}), so no analysis would be exact; not supported")
    if family and family != adapter_cls.family and adapter_cls is not IntrospectedAdapter:
        raise UserError(f"model {source!r} is a {adapter_cls.family} model (model_type {config.model_type!r}), not {family}")
    return config, adapter_cls


def _label(path, name: str | None) -> str:
    return name or Path(str(path or "organism")).name


def _processor(source: str, padding_side: str):
    from .processor_loading import load_processor

    try:
        processor = load_processor(source)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot load the tokenizer or processor of model {source!r}: {_first_line(exc)}") from exc
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return processor


def planning_adapter(
    path: str | Path | None = None, *, attn_implementation: str = "sdpa", padding_side: str = "left",
    name: str | None = None, family: str | None = None,
) -> ModelAdapter:
    """The adapter of `path`'s model built from its config.json on the meta device (no weights, no memory)
    with its real processor, counting passes instead of running them (`models/ledger.py`, `mllm-arb plan`)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from .ledger import Ledger

    source = materialise(path)
    config, adapter_cls = _checked_config(source, family, attn_implementation)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config, attn_implementation=attn_implementation)

    class Planned(adapter_cls):
        @property
        def device(self) -> torch.device:  # batches stay on the CPU: only their shapes and groups matter
            return torch.device("cpu")

    adapter = Planned(model, _processor(source, padding_side), name=_label(path, name))
    adapter.ledger = Ledger()
    return adapter


def load_adapter(
    path: str | Path | None = None,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    attn_implementation: str = "sdpa",
    padding_side: str = "left",
    name: str | None = None,
    family: str | None = None,
) -> ModelAdapter:
    """Load a model and its processor into the adapter of its family. `family`, when given, must match
    the checkpoint (a config naming the wrong family is caught before gigabytes are loaded)."""
    from transformers import AutoModelForImageTextToText

    source = materialise(path)
    config, adapter_cls = _checked_config(source, family, attn_implementation)
    if device == "auto" and importlib.util.find_spec("accelerate") is None:
        raise UserError("model.device=auto (device_map='auto') needs accelerate: pip install 'mllm-arb[multi-gpu]', or set model.device=cuda")
    check_device(device)
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    kwargs = {"dtype": DTYPES[dtype], "attn_implementation": attn_implementation}
    if device == "auto":
        kwargs["device_map"] = "auto"  # needs accelerate; spreads a large model over the GPUs
    try:
        model, info = AutoModelForImageTextToText.from_pretrained(source, output_loading_info=True, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, ImportError) as exc:
        # a truncated or empty shard, a config the class cannot build, an implementation not installed
        raise UserError(f"cannot load the weights of model {source!r}: {_first_line(exc)}") from exc
    except Exception as exc:  # safetensors' own error type is not an OSError
        if type(exc).__name__ != "SafetensorError":
            raise
        raise UserError(f"cannot read the weights of model {source!r} (damaged or truncated safetensors file): {_first_line(exc)}") from exc
    check_loading_info(source, info)
    if device not in ("auto", "cpu"):
        model = model.to(device)
    model.eval()
    processor = _processor(source, padding_side)
    label = _label(path, name)
    if adapter_cls is not IntrospectedAdapter:
        return adapter_cls(model, processor, name=label)
    try:
        adapter = adapter_cls(model, processor, name=label)
    except UserError as exc:
        raise UserError(f"model {source!r}: model type {config.model_type!r} has no family file and cannot be introspected "
                        f"({exc}); supported model types: {supported_types()}") from None
    log.warning("model type %r has no family file: using what introspection found (%d decoder layers × %d heads, the "
                "image token %d); the identity and fast-path tests cover only the supported families (%s)",
                config.model_type, adapter.parts.n_layers, adapter.parts.n_heads, adapter.image_token_id, supported_types())
    return adapter


def _last_line(exc: BaseException) -> str:
    """The cause of a wrapped error (its message's last line)."""
    lines = [l.strip() for l in str(exc).strip().splitlines() if l.strip()]
    return lines[-1] if lines else type(exc).__name__


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
