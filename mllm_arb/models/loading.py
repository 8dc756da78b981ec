"""Load any supported model into its adapter: a local directory, a cached hub id, the shipped
organism, or a tiny random-weight model built on the fly (`tiny:<family>`)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from ..core.errors import UserError
from .adapter import ModelAdapter
from .gemma3 import Gemma3Adapter
from .idefics3 import Idefics3Adapter
from .internvl import InternVLAdapter
from .llava import LlavaAdapter
from .llava_next import LlavaNextAdapter
from .qwen2_vl import Qwen2_5_VLAdapter, Qwen2VLAdapter

ADAPTERS: tuple[type[ModelAdapter], ...] = (
    LlavaAdapter,
    LlavaNextAdapter,
    Qwen2VLAdapter,
    Qwen2_5_VLAdapter,
    Idefics3Adapter,
    Gemma3Adapter,
    InternVLAdapter,
)
TINY_PREFIX = "tiny:"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "auto": "auto"}


def adapter_for(model_type: str) -> type[ModelAdapter]:
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    supported = ", ".join(t for a in ADAPTERS for t in a.model_types)
    raise UserError(f"unsupported architecture {model_type!r}; supported model types: {supported}")


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
    from transformers import AutoConfig, AutoModelForImageTextToText

    from .processor_loading import load_processor

    source = materialise(path)
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model {source!r}: not a local directory and not in the Hugging Face cache ({_first_line(exc)})") from exc
    adapter_cls = adapter_for(config.model_type)
    if family and family != adapter_cls.family:
        raise UserError(f"model {source!r} is a {adapter_cls.family} model (model_type {config.model_type!r}), not {family}")
    if device == "auto" and importlib.util.find_spec("accelerate") is None:
        raise UserError("model.device=auto (device_map='auto') needs accelerate: pip install 'mllm-arb[multi-gpu]', or set model.device=cuda")
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    kwargs = {"dtype": DTYPES[dtype], "attn_implementation": attn_implementation}
    if device == "auto":
        kwargs["device_map"] = "auto"  # needs accelerate; spreads a large model over the GPUs
    model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    if device not in ("auto", "cpu"):
        model = model.to(device)
    model.eval()
    processor = load_processor(source)
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return adapter_cls(model, processor, name=name or Path(str(path or "organism")).name)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
