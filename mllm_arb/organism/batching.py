"""Samples → model inputs, exactly as at inference: the processor's chat template, then the processor.

Training and evaluation of the organism both go through `encode`, which is the same path the
toolkit's adapters take (`apply_chat_template(chat_messages(sample), add_generation_prompt=True)`
then `processor(text=..., images=...)`, left padding), so the organism is trained on the very token
sequences it is analysed on. Rows with and without an image may share a batch: the processor counts
`<image>` placeholders over the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.prompt import chat_messages
from ..core.records import Sample


def prompt_text(processor, sample: Sample) -> str:
    return processor.apply_chat_template(chat_messages(sample), tokenize=False, add_generation_prompt=True)


def encode(processor, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
    """Left-padded processor output for a batch; the last column is every row's last prompt position."""
    processor.tokenizer.padding_side = "left"
    texts = [prompt_text(processor, s) for s in samples]
    images = [s.image.convert("RGB") for s in samples if s.image is not None]
    kwargs = {"text": texts, "return_tensors": "pt", "padding": True}
    if images:
        kwargs["images"] = images
    return dict(processor(**kwargs))


def first_token_id(tokenizer, answer: str) -> int:
    """The id of an answer's first token (the training target at the last prompt position)."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if not ids or ids[0] == tokenizer.unk_token_id:
        raise ValueError(f"answer {answer!r} is not in the organism's vocabulary")
    return int(ids[0])


def batch_with_spans(processor, samples: Sequence[Sample], inputs: dict[str, torch.Tensor], n_prompt: int, image_token_id: int):
    """`encode`'s output as an adapter `Batch`: every row's token groups, found in its first `n_prompt`
    columns the way the adapters find them (so the spans training sees are the ones analyses see)."""
    from ..models.adapter import Batch
    from ..core.prompt import token_groups

    tok = processor.tokenizer
    spans = []
    for row, sample in enumerate(samples):
        prompt = prompt_text(processor, sample)
        mask = inputs["attention_mask"][row, :n_prompt]
        start = int(mask.nonzero()[0])
        ids = inputs["input_ids"][row, start:n_prompt].tolist()
        adds_bos = not (tok.bos_token and prompt.startswith(tok.bos_token))
        groups = token_groups(tok, prompt, sample, ids, image_token_id, adds_bos)
        spans.append({g: [p + start for p in pos] for g, pos in groups.items()})
    return Batch(samples=list(samples), inputs=inputs, spans=spans)
