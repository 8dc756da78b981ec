"""Build the organism's parts from code: word-level tokenizer, LLaVA-1.5 chat template, CLIP image
processor, `LlavaProcessor`, and the `LlavaConfig` (CLIP vision tower + Llama text model).

The parts are the standard transformers classes, saved with `save_pretrained`, so a saved organism
loads and runs through exactly the same code path as a downloaded LLaVA checkpoint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: LLaVA-1.5 style: `USER: <image>\n{text} ASSISTANT:`; renders without an image too
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}{%- else -%}"
    "{%- for c in message['content'] if c['type'] == 'text' -%}{{ c['text'] }}{%- endfor -%}{%- endif -%}{{ ' ' }}"
    "{%- else -%}"
    "{{ message['role'].upper() + ': ' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}"
    "{%- for c in message['content'] if c['type'] == 'image' -%}{{ '<image>\\n' }}{%- endfor -%}"
    "{%- for c in message['content'] if c['type'] == 'text' -%}{{ c['text'] }}{%- endfor -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{{ '</s>' }}{%- endif -%}{{ ' ' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)

BOS, EOS, PAD, UNK, IMAGE = "<s>", "</s>", "<pad>", "<unk>", "<image>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, IMAGE)
#: the tokenizer's pre-tokenizer pattern: words, or runs of punctuation
WORD_PATTERN = re.compile(r"\w+|[^\w\s]+")
#: words always in the vocabulary besides those of the prompts (chat roles, a few common answers' forms)
BASE_WORDS = ("USER", "ASSISTANT", "SYSTEM", ":", ".", ",", "?", ";", "!", "yes", "no")


@dataclass(frozen=True)
class ArchConfig:
    """Sizes of the organism (text model ≥ 8 layers × 8 heads = 64 heads)."""

    image_size: int = 32
    patch_size: int = 4
    vision_hidden: int = 96
    vision_layers: int = 4
    vision_heads: int = 4
    vision_intermediate: int = 384
    text_hidden: int = 128
    text_layers: int = 8
    text_heads: int = 8
    text_intermediate: int = 512
    max_positions: int = 512


def vocabulary() -> list[str]:
    """Special tokens first, then every word and punctuation run of the synthetic prompts, sorted."""
    from ..data.synthetic import vocabulary_texts

    words: set[str] = set(BASE_WORDS)
    for text in vocabulary_texts():
        words.update(WORD_PATTERN.findall(text))
        # capitalised forms too, so a sentence-initial answer ("Red") is a known word
        words.update(w.capitalize() for w in WORD_PATTERN.findall(text) if w.isalpha())
    return list(SPECIAL_TOKENS) + sorted(words - set(SPECIAL_TOKENS))


def build_tokenizer():
    """A fast word-level tokenizer: every prompt word is one token, punctuation split off, BOS added."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # join words with spaces, then glue punctuation back on: decode(prompt ids) reads like the prompt
    tok.decoder = decoders.Sequence(
        [decoders.WordPiece(prefix="##", cleanup=True), decoders.Replace(" :", ":"), decoders.Replace(" ;", ";")]
    )
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens={"image_token": IMAGE},
        padding_side="left",
        model_max_length=512,
        clean_up_tokenization_spaces=True,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_image_processor(arch: ArchConfig = ArchConfig()):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": arch.image_size},
        crop_size={"height": arch.image_size, "width": arch.image_size},
        resample=3,  # bicubic; images are already drawn at this size, so resizing is the identity
    )


def build_processor(arch: ArchConfig = ArchConfig()):
    from transformers import LlavaProcessor

    return LlavaProcessor(
        image_processor=build_image_processor(arch),
        tokenizer=build_tokenizer(),
        patch_size=arch.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token, which the "default" strategy drops again
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE,
    )


def build_config(tokenizer, arch: ArchConfig = ArchConfig()):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=arch.vision_hidden,
        intermediate_size=arch.vision_intermediate,
        num_hidden_layers=arch.vision_layers,
        num_attention_heads=arch.vision_heads,
        image_size=arch.image_size,
        patch_size=arch.patch_size,
        projection_dim=arch.vision_hidden,
        hidden_act="gelu",
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.text_hidden,
        intermediate_size=arch.text_intermediate,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        num_key_value_heads=arch.text_heads,
        max_position_embeddings=arch.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        rope_theta=10000.0,
    )
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE)
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        image_seq_length=(arch.image_size // arch.patch_size) ** 2,
        tie_word_embeddings=False,
    )


def build_model(processor, arch: ArchConfig = ArchConfig(), seed: int = 0):
    """A freshly initialised `LlavaForConditionalGeneration` (deterministic from `seed`)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    config = build_config(processor.tokenizer, arch)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.bos_token_id = processor.tokenizer.bos_token_id
    return model
