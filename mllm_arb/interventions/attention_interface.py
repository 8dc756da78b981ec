"""Route the text decoder's attention through a function of ours, for the duration of a block.

Knockout (edit the mask), attention-weight recording (keep the weights) and suffix resumes (put the
recorded keys and values of earlier positions in front) all act inside the attention call. Each does it
the same way, which is the one safe way on transformers 5.x:

1. the function is registered under a fresh name in transformers' `AttentionInterface`;
2. the same name is registered in the mask registry (`AttentionMaskInterface`) with the mask builder of
   the implementation it stands in for: a name the mask registry does not know gets *no mask at all*
   (causal and padding masking would silently vanish);
3. only the text model's implementation is switched to that name (the vision tower keeps its own), and
   the previous one is restored on exit, also when the block raises.

Wrappers nest: an inner one wraps whatever the text model runs when it is entered, and `root_impl`
tells any of them which plain implementation (eager or sdpa) is at the bottom of the chain.
"""

from __future__ import annotations

import itertools
import sys
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..core.errors import UserError

#: implementations a wrapper can stand in for: their masks are plain tensors we can edit or slice
WRAPPABLE = ("eager", "sdpa")
_PREFIX = "mllm_arb_attention_"  # must not contain "sdpa": transformers would run sdpa dispatch checks on it
_counter = itertools.count()
#: registered name -> the plain implementation at the bottom of its chain (for nested wrappers)
_ROOT_IMPL: dict[str, str] = {}

#: `wrapper(base, module, query, key, value, attention_mask, *args, **kwargs)`, `base` the wrapped function
Wrapper = Callable[..., object]


def eager_attention_of(module):
    """The eager attention function of `module`'s model file.

    "eager" is no registry entry: each model file defines its own `eager_attention_forward` (Gemma's
    adds softcapping), the one its attention class falls back to.
    """
    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        raise UserError(f"{type(module).__name__}: no eager_attention_forward in {type(module).__module__}")
    return fn


def attention_function(impl: str, module):
    """What the text model's attention calls under implementation `impl` (a registered name or eager)."""
    return eager_attention_of(module) if impl == "eager" else ALL_ATTENTION_FUNCTIONS[impl]


def text_implementation(model) -> str:
    return model.config.get_text_config()._attn_implementation


def root_implementation(impl: str) -> str:
    """The plain implementation (eager or sdpa) at the bottom of a chain of wrappers named `impl`."""
    return _ROOT_IMPL.get(impl, impl)


def as_mask(allowed: torch.Tensor, root_impl: str, dtype: torch.dtype) -> torch.Tensor:
    """A boolean "may attend" mask in the form the implementation at the bottom of the chain takes:
    boolean for sdpa, additive for eager (which adds its mask; the large negative value is the one the
    model's own masks use, exactly 0 after softmax)."""
    if root_impl != "eager":
        return allowed
    return torch.where(allowed, torch.zeros((), dtype=dtype, device=allowed.device), torch.finfo(dtype).min)


def _text_config_key(model) -> str | None:
    """The sub-config key of the text model (None when the model's own config is the text config)."""
    text_cfg = model.config.get_text_config()
    if text_cfg is model.config:
        return None
    for key in model.config.sub_configs:
        if getattr(model.config, key, None) is text_cfg:
            return key
    raise UserError(f"{type(model).__name__}: cannot tell which sub-config is the text model's")


#: models whose text config is one object that every module of the text model reads: switching between
#: implementations already checked on them is writing that config's attribute (transformers' own
#: `set_attn_implementation` walks every module of the model each time: ~1 ms, per stacked pass)
_SHARED_TEXT_CONFIG: weakref.WeakSet = weakref.WeakSet()


def _text_config_is_shared(model) -> bool:
    text_cfg = model.config.get_text_config()
    owners = [m for m in model.modules() if isinstance(m, PreTrainedModel) and m.config is text_cfg]
    return bool(owners) and all(getattr(m, "config", text_cfg) is text_cfg for o in owners for m in o.modules())


def set_text_attention(model, impl: str) -> None:
    if model in _SHARED_TEXT_CONFIG and (impl in WRAPPABLE or impl in _ROOT_IMPL):
        model.config.get_text_config()._attn_implementation = impl
        return
    key = _text_config_key(model)
    model.set_attn_implementation(impl if key is None else {key: impl})
    if text_implementation(model) != impl:
        raise UserError(f"{type(model).__name__}: could not switch the text model's attention to {impl!r}")
    if _text_config_is_shared(model):
        _SHARED_TEXT_CONFIG.add(model)


@contextmanager
def text_attention(model, attention, mask_impl: str, root_impl: str) -> Iterator[str]:
    """Within the block the text model's attention is `attention(module, query, key, value, mask, ...)`,
    its masks built as `mask_impl` builds them. Yields the registered name."""
    name = f"{_PREFIX}{next(_counter)}"
    before = text_implementation(model)
    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[mask_impl])
    _ROOT_IMPL[name] = root_impl
    try:
        set_text_attention(model, name)
        try:
            yield name
        finally:
            set_text_attention(model, before)
    finally:
        # `register` writes the class-wide mapping; unregistering is removing the entry from it again.
        AttentionInterface._global_mapping.pop(name, None)
        AttentionMaskInterface._global_mapping.pop(name, None)
        _ROOT_IMPL.pop(name, None)


@contextmanager
def wrap_text_attention(model, wrapper: Wrapper, purpose: str) -> Iterator[str]:
    """Within the block the text model's attention calls `wrapper(base, module, query, ...)`, `base`
    being what it ran before (eager, sdpa, or an outer wrapper). Yields the plain implementation at
    the bottom of the chain. `purpose` names the caller in the error for an unwrappable model."""
    base_impl = text_implementation(model)
    if base_impl not in WRAPPABLE and base_impl not in _ROOT_IMPL:
        raise UserError(
            f"{purpose} needs eager or sdpa attention, not {base_impl!r}; "
            "load the model with attn_implementation='sdpa' (or 'eager' for attention weights)"
        )

    def attention(module, *args, **kwargs):
        return wrapper(attention_function(base_impl, module), module, *args, **kwargs)

    root = root_implementation(base_impl)
    with text_attention(model, attention, mask_impl=base_impl, root_impl=root):
        yield root
