"""Tiny random-weight checkpoints of every supported family, built in code (no hub access).

Each family gets a 2-layer text model, a 1-2 layer vision tower, the family's real image-processor class
(PIL backend), a byte-level BPE tokenizer carrying the family's real special-token strings, and a chat
template that renders prompts the way the real checkpoint does. `save_tiny_model` writes all of it with
`save_pretrained`, so the toolkit loads a tiny checkpoint exactly like a real one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ..core.prompt import CONTEXT_PREFIX, FORMAT_SENTENCE, TEXT_INSTRUCTION, VISION_INSTRUCTION

TINY_FAMILIES = ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe", "mistral3", "llama4", "molmo2", "glm4v", "idefics3", "gemma3", "gemma4", "internvl")

# Shared text-model shape: GQA everywhere (4 query heads, 2 key/value heads).
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, LAYERS = 64, 4, 2, 16, 128, 2
# Shared vision-tower shape.
V_HIDDEN, V_HEADS, V_FFN, V_LAYERS = 32, 2, 64, 2

STUDY_SENTENCES = (
    CONTEXT_PREFIX + "The man is holding a red umbrella.",
    TEXT_INSTRUCTION,
    VISION_INSTRUCTION,
    "What color is the umbrella?",
    FORMAT_SENTENCE,
)

_COMMON_WORDS = """
red green blue yellow orange purple pink brown black white gray color colour circle square triangle
star heart shape left right top bottom middle center one two three four five six seven eight nine ten
yes no the of and to in is you that it he was for on are as with his they at be this have from or had
by word but not what all were we when your can said there use an each which she do how their if will
up other about out many then them these so some her would make like him into time has look more write
go see number way could people my than first water been call who its now find long down day did get
come made may part man woman boy girl child dog cat bird car bus tree house ball box cup book table
chair door window sky sun moon road street city picture image photo text context question answer
single phrase umbrella holding hold carry wearing sitting standing walking running big small large
little tall short old new good bad happy sad hot cold above below behind front next near far inside
outside object objects animal animals person people count how many which where why who whom whose
rely rather than input content inconsistency between case must only instead please describe show
shown see seen visible scene background foreground describe description caption true false correct
wrong same different both neither either any every all none most least first last second third
there here this that these those is are was were be being been have has had do does did say says
said tell told ask asked give gave take took think thought know knew want need use used try tried
""".split()
# Words of the chat templates, so that role names are whole tokens as in real vocabularies.
_CHAT_WORDS = (
    "USER: ASSISTANT:", "User: Assistant:", "[INST] [/INST]", "user assistant system model",
    "You are a helpful assistant.",
)  # fmt: skip


# --------------------------------------------------------------------------------------------- tokenizer


def _bpe() -> Tokenizer:
    """A byte-level BPE trained on the study sentences and common words (deterministic, ~10 ms)."""
    bpe = Tokenizer(models.BPE())
    # Byte-level: every string encodes, and decode gives the exact text back.
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    corpus = [*STUDY_SENTENCES, *_CHAT_WORDS, " ".join(_COMMON_WORDS), *(f" {w}" for w in _COMMON_WORDS)]
    bpe.train_from_iterator(corpus * 2, trainer)
    return bpe


def _tokenizer(spec: "_Family") -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=_bpe(),
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        extra_special_tokens=list(spec.extra_tokens),
        add_bos_token=spec.add_bos,
        padding_side=spec.padding_side,
        **spec.named_tokens,
    )


def _ids(tok: PreTrainedTokenizerFast, *tokens: str) -> list[int]:
    return tok.convert_tokens_to_ids(list(tokens))


def _vocab_size(tok: PreTrainedTokenizerFast) -> int:
    return -(-len(tok) // 64) * 64  # padded like real checkpoints; always covers added tokens


# ------------------------------------------------------------------------------------- chat templates

# Each mimics the family's real checkpoint template; all also accept text-only and string content.
_LLAVA_TEMPLATE = (  # llava-hf/llava-1.5-*-hf
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
_LLAVA_NEXT_TEMPLATE = (  # llava-hf/llava-v1.6-mistral-7b-hf
    "{% for message in messages %}{% if message['content'] is string %}{% set texts = [message['content']] %}{% else %}"
    "{% set texts = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | list %}"
    "{% endif %}"
    "{% if message['role'] == 'system' %}{{ '<<SYS>>\n' + texts | join('') + '\n<</SYS>>\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% if message['content'] is not string %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{% endif %}{{ texts | join('') }}{{ ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + texts | join('') + '</s>' }}{% endif %}{% endfor %}"
)
_ONEVISION_TEMPLATE = (  # llava-hf/llava-onevision-qwen2-*-ov-hf: Qwen turns, every image first, then the text
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_GLM4V_TEMPLATE = (  # zai-org/GLM-4.1V-9B-Thinking: [gMASK]<sop>, role tags, the image wrapped in begin/end tokens
    "[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|begin_of_image|><|image|><|end_of_image|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
_QWEN_TEMPLATE = (  # Qwen/Qwen2-VL-*-Instruct, Qwen/Qwen2.5-VL-*-Instruct
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_QWEN3_5_TEMPLATE = (  # Qwen/Qwen3.5-*: no default system turn; a thinking model, its thought closed empty when
    # the caller turns thinking off (as the adapter does: the answer must be the next token)
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% else %}<think>\n{% endif %}"
    "{% endif %}"
)
_MISTRAL3_TEMPLATE = (  # mistralai/Mistral-Small-3.1-24B-Instruct-2503, without its default system prompt
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}[SYSTEM_PROMPT]{{ message['content'] }}[/SYSTEM_PROMPT]"
    "{% elif message['role'] == 'user' %}[INST]{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for block in message['content'] %}{% if block['type'] == 'image' %}[IMG]"
    "{% elif block['type'] == 'text' %}{{ block['text'] }}{% endif %}{% endfor %}{% endif %}[/INST]"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
_LLAMA4_TEMPLATE = (  # meta-llama/Llama-4-Scout-17B-16E-Instruct, without its tool and date sections
    "{{ bos_token }}{% for message in messages %}<|header_start|>{{ message['role'] }}<|header_end|>\n\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|image|>{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|eot|>{% endfor %}"
    "{% if add_generation_prompt %}<|header_start|>assistant<|header_end|>\n\n{% endif %}"
)
_MOLMO2_TEMPLATE = (  # allenai/Molmo2-*: Qwen turns after the processor's leading BOS, images first in a turn
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] if content['type'] == 'image' %}<|image|>{% endfor %}"
    "{% for content in message['content'] if content['type'] == 'text' %}{{ content['text'] }}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_IDEFICS3_TEMPLATE = (  # HuggingFaceM4/Idefics3-8B-Llama3
    "<|begin_of_text|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
_GEMMA3_TEMPLATE = (  # google/gemma-3-*-it
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
_GEMMA4_TEMPLATE = (  # google/gemma-4-*-it: <|turn>role ... <turn|> turns, images as the <|image|> placeholder
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<|turn>' + role + '\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<|image|>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<turn|>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|turn>model\n' }}{%- endif -%}"
)
_INTERNVL_TEMPLATE = (  # OpenGVLab/InternVL3-*-hf
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# ------------------------------------------------------------------------------------ family table


@dataclass(frozen=True)
class _Family:
    """Tokenizer facts of one family (strings as in the real checkpoint) and how to build the rest."""

    bos: str | None
    eos: str
    pad: str
    add_bos: bool  # does the real tokenizer prepend BOS by itself?
    named_tokens: dict[str, str]  # tokenizer attributes the family's processor reads (image_token, ...)
    extra_tokens: tuple[str, ...]  # other added special tokens (turn markers, ...)
    chat_template: str
    build: Callable  # (tokenizer) -> (config, image_processor, processor_class, processor_kwargs)
    generation_eos: tuple[str, ...] = ()
    padding_side: str = "left"  # batched scoring reads the last position: pad on the left
    learnt: Callable | None = None  # (model) -> None: sets weights a real checkpoint learns away from their init


def _text(model_type: str, tok, **extra) -> dict:
    cfg = dict(
        model_type=model_type,
        vocab_size=_vocab_size(tok),
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    cfg.update(extra)
    return cfg


def _vision_tower(model_type: str, image_size: int, patch_size: int, **extra) -> dict:
    return dict(
        model_type=model_type,
        hidden_size=V_HIDDEN,
        intermediate_size=V_FFN,
        num_hidden_layers=V_LAYERS,
        num_attention_heads=V_HEADS,
        image_size=image_size,
        patch_size=patch_size,
        **extra,
    )


def _clip_vision(image_size: int, patch_size: int) -> dict:
    return _vision_tower("clip_vision_model", image_size, patch_size, projection_dim=V_HIDDEN)


def _siglip_vision(image_size: int, patch_size: int, **extra) -> dict:
    return _vision_tower("siglip_vision_model", image_size, patch_size, **extra)


def _build_llava(tok):
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaProcessor

    image, patch = 32, 8  # 4x4 patches + CLS; "default" strategy drops CLS -> 16 image tokens
    config = LlavaConfig(
        text_config=_text("llama", tok),
        vision_config=_clip_vision(image, patch),
        image_token_index=tok.image_token_id,
        image_seq_length=(image // patch) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    ip = CLIPImageProcessorPil(size={"shortest_edge": image}, crop_size={"height": image, "width": image})
    kwargs = dict(patch_size=patch, vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return config, ip, LlavaProcessor, kwargs


def _build_llava_next(tok):
    from transformers import LlavaNextConfig, LlavaNextImageProcessorPil, LlavaNextProcessor

    tile, patch = 32, 8
    # Real pinpoints are 1x2, 2x1, 2x2, ... tiles; 2x2 is left out to keep a 40 px image at 36 tokens.
    pinpoints = [[tile, tile], [tile, 2 * tile], [2 * tile, tile]]
    config = LlavaNextConfig(
        text_config=_text("mistral", tok, sliding_window=None),
        vision_config=_clip_vision(tile, patch),
        image_token_index=tok.image_token_id,
        image_grid_pinpoints=pinpoints,
        image_seq_length=(tile // patch) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    ip = LlavaNextImageProcessorPil(
        size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile}, image_grid_pinpoints=pinpoints
    )
    kwargs = dict(patch_size=patch, vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return config, ip, LlavaNextProcessor, kwargs


def _build_llava_onevision(tok):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionImageProcessorPil, LlavaOnevisionProcessor

    tile, patch = 32, 8
    pinpoints = [[tile, tile], [tile, 2 * tile], [2 * tile, tile]]  # as LLaVA-NeXT's, kept small
    config = LlavaOnevisionConfig(
        text_config=_text("qwen2", tok),
        vision_config=_siglip_vision(tile, patch),
        image_token_index=tok.image_token_id,
        video_token_index=tok.video_token_id,
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="full",  # SigLIP has no CLS token to drop
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
    )
    ip = LlavaOnevisionImageProcessorPil(size={"height": tile, "width": tile}, image_grid_pinpoints=pinpoints)
    kwargs = dict(num_image_tokens=(tile // patch) ** 2, vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9")
    return config, ip, LlavaOnevisionProcessor, kwargs


_QWEN_PATCH, _QWEN_MERGE = 4, 2  # 8 px per image token; 40x40 -> 5x5 = 25 tokens


def _qwen_image_processor():
    from transformers import Qwen2VLImageProcessorPil

    px = _QWEN_PATCH * _QWEN_MERGE
    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": (2 * px) ** 2, "longest_edge": (8 * px) ** 2},  # 4 .. 64 image tokens
        patch_size=_QWEN_PATCH,
        merge_size=_QWEN_MERGE,
        temporal_patch_size=2,
    )


def _qwen_ids(tok) -> dict:
    image, video, start, end = _ids(tok, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    return dict(image_token_id=image, video_token_id=video, vision_start_token_id=start, vision_end_token_id=end)


def _qwen_rope() -> dict:
    # mrope sections split head_dim/2 = 8 frequencies over (time, height, width) like the real [16, 24, 24].
    return {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]}


def _build_qwen2_vl(tok):
    from transformers import Qwen2VLConfig, Qwen2VLProcessor

    config = Qwen2VLConfig(
        text_config=_text("qwen2_vl_text", tok, rope_parameters=_qwen_rope()),
        vision_config=dict(
            depth=V_LAYERS,
            embed_dim=V_HIDDEN,
            hidden_size=HIDDEN,
            mlp_ratio=2,
            num_heads=V_HEADS,
            patch_size=_QWEN_PATCH,
            spatial_merge_size=_QWEN_MERGE,
            temporal_patch_size=2,
        ),
        **_qwen_ids(tok),
    )
    return config, _qwen_image_processor(), Qwen2VLProcessor, {}


def _build_qwen2_5_vl(tok):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLProcessor

    config = Qwen2_5_VLConfig(
        text_config=_text("qwen2_5_vl_text", tok, rope_parameters=_qwen_rope()),
        vision_config=dict(
            depth=V_LAYERS,
            hidden_size=V_HIDDEN,
            intermediate_size=V_FFN,
            out_hidden_size=HIDDEN,
            num_heads=V_HEADS,
            patch_size=_QWEN_PATCH,
            spatial_merge_size=_QWEN_MERGE,
            temporal_patch_size=2,
            window_size=4 * _QWEN_PATCH * _QWEN_MERGE,  # windows of 4x4 tokens: a 40 px image spans several
            fullatt_block_indexes=[V_LAYERS - 1],
        ),
        **_qwen_ids(tok),
    )
    return config, _qwen_image_processor(), Qwen2_5_VLProcessor, {}


def _qwen3_vision(**extra) -> dict:
    return dict(
        depth=V_LAYERS,
        hidden_size=V_HIDDEN,
        intermediate_size=V_FFN,
        num_heads=V_HEADS,
        out_hidden_size=HIDDEN,
        patch_size=_QWEN_PATCH,
        spatial_merge_size=_QWEN_MERGE,
        temporal_patch_size=2,
        num_position_embeddings=64,  # an 8x8 grid of learned positions, interpolated to the image's
        deepstack_visual_indexes=[0, 1],  # DeepStack: vision layers 0 and 1 also write into text layers 0 and 1
        **extra,
    )


def _qwen3_rope() -> dict:
    # interleaved 3-D rotary over head_dim/2 = 8 frequencies, like the real [24, 20, 20] over 64
    return {"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True}


def _build_qwen3_vl(tok):
    from transformers import Qwen3VLConfig, Qwen3VLProcessor

    config = Qwen3VLConfig(
        text_config=_text("qwen3_vl_text", tok, rope_parameters=_qwen3_rope()),
        vision_config=_qwen3_vision(),
        **_qwen_ids(tok),
    )
    return config, _qwen_image_processor(), Qwen3VLProcessor, {}


def _build_qwen3_vl_moe(tok):
    from transformers import Qwen3VLMoeConfig, Qwen3VLProcessor

    text = _text("qwen3_vl_moe_text", tok, rope_parameters=_qwen3_rope(), num_experts=4, num_experts_per_tok=2,
                 moe_intermediate_size=FFN // 2, decoder_sparse_step=1)
    config = Qwen3VLMoeConfig(text_config=text, vision_config=_qwen3_vision(model_type="qwen3_vl_moe"), **_qwen_ids(tok))
    return config, _qwen_image_processor(), Qwen3VLProcessor, {}


def _build_qwen3_5(tok):
    from transformers import Qwen3_5Config, Qwen3VLProcessor

    # half of each head is rotary (the real models: a quarter, 64 of 256), its 4 frequencies interleaved over (t, h, w)
    rope = {"rope_type": "default", "rope_theta": 10_000_000.0, "partial_rotary_factor": 0.25 * 2,
            "mrope_section": [2, 1, 1], "mrope_interleaved": True}
    # linear attention and full attention alternate (the real models: three linear layers to one full)
    text = _text("qwen3_5_text", tok, num_hidden_layers=4, layer_types=["linear_attention", "full_attention"] * 2,
                 rope_parameters=rope, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=HEAD_DIM,
                 linear_value_head_dim=HEAD_DIM, linear_conv_kernel_dim=4)
    vision = _qwen3_vision(model_type="qwen3_5")
    del vision["deepstack_visual_indexes"]  # Qwen3.5's vision tower writes only at its end
    config = Qwen3_5Config(text_config=text, vision_config=vision, **_qwen_ids(tok))
    return config, _qwen_image_processor(), Qwen3VLProcessor, {}


def _build_qwen3_5_moe(tok):
    from transformers import Qwen3_5MoeConfig

    dense, ip, processor, kwargs = _build_qwen3_5(tok)
    # every MLP a sparse block: 4 experts, 2 per token, and a gated shared expert
    text = {**dense.text_config.to_dict(), "model_type": "qwen3_5_moe_text", "num_experts": 4, "num_experts_per_tok": 2,
            "moe_intermediate_size": FFN // 2, "shared_expert_intermediate_size": FFN // 2}
    vision = {**dense.vision_config.to_dict(), "model_type": "qwen3_5_moe"}
    return Qwen3_5MoeConfig(text_config=text, vision_config=vision, **_qwen_ids(tok)), ip, processor, kwargs


_PIXTRAL_PATCH, _PIXTRAL_MERGE = 4, 2  # 8 px per image token: 40x40 -> 5 rows of 5 [IMG] and a break or end


def _build_mistral3(tok):
    from transformers import Mistral3Config, PixtralImageProcessorPil

    from .processor_loading import PixtralProcessor

    vision = _vision_tower("pixtral", 8 * _PIXTRAL_PATCH * _PIXTRAL_MERGE, _PIXTRAL_PATCH, head_dim=V_HIDDEN // V_HEADS)
    config = Mistral3Config(vision_config=vision, text_config=_text("mistral", tok, sliding_window=None),
                            image_token_index=tok.convert_tokens_to_ids("[IMG]"), spatial_merge_size=_PIXTRAL_MERGE,
                            vision_feature_layer=-1, tie_word_embeddings=False)
    ip = PixtralImageProcessorPil(size={"longest_edge": 8 * _PIXTRAL_PATCH * _PIXTRAL_MERGE}, patch_size=_PIXTRAL_PATCH)
    return config, ip, PixtralProcessor, dict(patch_size=_PIXTRAL_PATCH, spatial_merge_size=_PIXTRAL_MERGE)


_LLAMA4_TILE, _LLAMA4_PATCH = 32, 8  # a 32 px tile of 4x4 patches, pixel-shuffled by 0.5: 4 tokens per tile


def _build_llama4(tok):
    from transformers import Llama4Config, Llama4Processor

    from .image_processing import Llama4ImageProcessorPil

    patch, image, start, end = _ids(tok, "<|patch|>", "<|image|>", "<|image_start|>", "<|image_end|>")
    vision = _vision_tower("llama4_vision_model", _LLAMA4_TILE, _LLAMA4_PATCH, vision_output_dim=V_HIDDEN,
                           projector_input_dim=V_HIDDEN, projector_output_dim=V_HIDDEN, pixel_shuffle_ratio=0.5)
    vision["intermediate_size"] = 4 * V_HIDDEN  # the pixel shuffle's 2 x 2 features feed the vision MLP's width
    # 4 layers: chunked attention (chunks of 16 positions) with rotary, and every 4th layer global without it
    # (NoPE); MoE MLPs in every other layer (4 experts, 1 per token, and a shared expert), dense ones between
    text = _text("llama4_text", tok, num_hidden_layers=4, intermediate_size=FFN // 2, intermediate_size_mlp=FFN,
                 num_local_experts=4, num_experts_per_tok=1, interleave_moe_layer_step=2, attention_chunk_size=16,
                 rope_parameters={"rope_type": "default", "rope_theta": 500_000.0})
    config = Llama4Config(vision_config=vision, text_config=text, image_token_index=patch, boi_token_index=start,
                          eoi_token_index=end)
    ip = Llama4ImageProcessorPil(size={"height": _LLAMA4_TILE, "width": _LLAMA4_TILE}, max_patches=4)
    return config, ip, Llama4Processor, dict(patch_size=_LLAMA4_PATCH, pixel_shuffle_ratio=0.5)


_MOLMO2_CROP, _MOLMO2_PATCH = 32, 4  # 8 x 8 patches a crop, 1-patch overlap margins, pooled 2 x 2: 16 tokens a crop


def _build_molmo2(tok):
    from transformers import Molmo2Config, Molmo2Processor

    from .image_processing import Molmo2ImageProcessorPil

    ids = dict(zip(("image_start_token_id", "low_res_image_start_token_id", "image_end_token_id", "image_patch_id",
                    "frame_start_token_id", "frame_end_token_id"),
                   _ids(tok, "<im_start>", "<low_res_im_start>", "<im_end>", "<im_patch>", "<frame_start>", "<frame_end>")))
    vision = dict(hidden_size=V_HIDDEN, intermediate_size=V_FFN, num_hidden_layers=V_LAYERS, num_attention_heads=V_HEADS,
                  num_key_value_heads=V_HEADS, head_dim=V_HIDDEN // V_HEADS, image_size=[_MOLMO2_CROP] * 2,
                  patch_size=_MOLMO2_PATCH)
    adapter = dict(vision_feature_layer=[-1, -2], hidden_size=V_HIDDEN, num_attention_heads=V_HEADS,
                   num_key_value_heads=V_HEADS, head_dim=V_HIDDEN // V_HEADS, intermediate_size=FFN, text_hidden_size=HIDDEN)
    text = _text("molmo2_text", tok, additional_vocab_size=0, qk_norm_type="qwen3")
    config = Molmo2Config(vision_config=vision, adapter_config=adapter, text_config=text, **ids)
    ip = Molmo2ImageProcessorPil(size={"height": _MOLMO2_CROP, "width": _MOLMO2_CROP}, patch_size=_MOLMO2_PATCH,
                                 overlap_margins=[1, 1], max_crops=4, pooling_size=[2, 2])
    return config, ip, Molmo2Processor, {}


def _build_glm4v(tok):
    from transformers import Glm4vConfig, Glm4vImageProcessorPil, Glm4vProcessor

    image, video, start, end, vstart, vend = _ids(tok, "<|image|>", "<|video|>", "<|begin_of_image|>", "<|end_of_image|>",
                                                  "<|begin_of_video|>", "<|end_of_video|>")
    # half the head is rotary, its frequencies split over (time, height, width) like the real [8, 12, 12]
    rope = {"rope_type": "default", "rope_theta": 10_000.0, "partial_rotary_factor": 0.5, "mrope_section": [2, 1, 1]}
    config = Glm4vConfig(
        text_config=_text("glm4v_text", tok, rope_parameters=rope),
        vision_config=dict(depth=V_LAYERS, hidden_size=V_HIDDEN, intermediate_size=V_FFN, num_heads=V_HEADS,
                           out_hidden_size=HIDDEN, image_size=8 * _QWEN_PATCH, patch_size=_QWEN_PATCH,
                           spatial_merge_size=_QWEN_MERGE, temporal_patch_size=2),
        image_token_id=image, video_token_id=video, image_start_token_id=start, image_end_token_id=end,
        video_start_token_id=vstart, video_end_token_id=vend,
    )
    px = _QWEN_PATCH * _QWEN_MERGE
    ip = Glm4vImageProcessorPil(size={"shortest_edge": (2 * px) ** 2, "longest_edge": (8 * px) ** 2},
                                patch_size=_QWEN_PATCH, merge_size=_QWEN_MERGE, temporal_patch_size=2)
    return config, ip, Glm4vProcessor, {}


def _build_idefics3(tok):
    from transformers import Idefics3Config, Idefics3ImageProcessorPil, Idefics3Processor

    tile, patch, scale = 32, 8, 2  # 4x4 patches, pixel-shuffled by 2 -> 4 tokens per tile
    config = Idefics3Config(
        text_config=_text("llama", tok),
        vision_config=dict(
            hidden_size=V_HIDDEN,
            intermediate_size=V_FFN,
            num_hidden_layers=V_LAYERS,
            num_attention_heads=V_HEADS,
            image_size=tile,
            patch_size=patch,
        ),
        scale_factor=scale,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        pad_token_id=tok.pad_token_id,
    )
    # Like the real one: resize the long side to 2 tiles, split into tiles, add a global tile.
    ip = Idefics3ImageProcessorPil(
        size={"longest_edge": 2 * tile}, max_image_size={"longest_edge": tile}, do_image_splitting=True
    )
    kwargs = dict(image_seq_len=(tile // patch) ** 2 // scale**2)
    return config, ip, Idefics3Processor, kwargs


def _build_gemma3(tok):
    from transformers import Gemma3Config, Gemma3ImageProcessorPil, Gemma3Processor

    image, patch, tokens = 32, 4, 16  # 8x8 patches average-pooled to 4x4 = 16 soft tokens
    config = Gemma3Config(
        text_config=_text(
            "gemma3_text",
            tok,
            query_pre_attn_scalar=HEAD_DIM,
            sliding_window=128,  # real: 1024, wider than a prompt; same here
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
            },
        ),
        vision_config=_siglip_vision(image, patch, vision_use_head=False),
        mm_tokens_per_image=tokens,
        boi_token_index=tok.boi_token_id,
        eoi_token_index=tok.eoi_token_id,
        image_token_index=tok.image_token_id,
    )
    ip = Gemma3ImageProcessorPil(size={"height": image, "width": image})
    return config, ip, Gemma3Processor, dict(image_seq_length=tokens)


def _build_gemma4(tok):
    from transformers import Gemma4AudioFeatureExtractor, Gemma4Config, Gemma4ImageProcessorPil, Gemma4Processor

    # The real image processor's smallest budget is 70 soft tokens: 2-px patches, pooled 3x3, a square
    # image of 48 px -> 24x24 patches -> 64 tokens, bidirectional inside the image as in the real model.
    patch, pool = 2, 3
    layer_types = ["sliding_attention", "full_attention"] * 2
    config = Gemma4Config(
        text_config=_text(
            "gemma4_text", tok,
            num_hidden_layers=4, layer_types=layer_types, sliding_window=128,
            # what makes Gemma 4 itself: a per-layer input written after the MLP, wider heads in the full
            # attention layers (keys serving as values there), the last layers reusing earlier layers' keys
            # and values, soft-capped logits (real: 30 on logits in the tens; 2 here, on a random model's
            # logits below 1, so that the cap bends them as much)
            hidden_size_per_layer_input=8, vocab_size_per_layer_input=_vocab_size(tok), global_head_dim=2 * HEAD_DIM,
            num_global_key_value_heads=1, attention_k_eq_v=True, num_kv_shared_layers=2, final_logit_softcapping=2.0,
            use_bidirectional_attention="vision",
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
            },
        ),
        vision_config=dict(hidden_size=V_HIDDEN, intermediate_size=V_FFN, num_hidden_layers=1, num_attention_heads=V_HEADS,
                           num_key_value_heads=V_HEADS, head_dim=V_HIDDEN // V_HEADS, patch_size=patch, pooling_kernel_size=pool,
                           position_embedding_size=64),
        boi_token_id=tok.boi_token_id, eoi_token_id=tok.eoi_token_id, image_token_id=tok.image_token_id,
        boa_token_id=tok.boa_token_id, eoa_token_index=tok.eoa_token_id, audio_token_id=tok.audio_token_id,
        video_token_id=tok.convert_tokens_to_ids("<|video|>"), audio_config=None,
    )  # fmt: skip
    ip = Gemma4ImageProcessorPil(patch_size=patch, pooling_kernel_size=pool, max_soft_tokens=70)
    return config, ip, Gemma4Processor, dict(image_seq_length=70, feature_extractor=Gemma4AudioFeatureExtractor())


@torch.no_grad()
def _gemma4_layer_scales(model) -> None:
    """Layer scales away from their initial 1, as trained ones are, so that the scale is a real writer."""
    for index, layer in enumerate(model.model.language_model.layers):
        layer.layer_scalar.fill_(0.6 + 0.25 * index)


def _build_internvl(tok):
    from transformers import GotOcr2ImageProcessorPil, InternVLConfig, InternVLProcessor

    tile, patch = 32, 4  # 8x8 patches, pixel-shuffled by 0.5 -> 16 tokens per tile
    tokens = (tile // patch) ** 2 // 4
    config = InternVLConfig(
        text_config=_text("qwen2", tok),
        vision_config=dict(
            hidden_size=V_HIDDEN,
            intermediate_size=V_FFN,
            num_hidden_layers=V_LAYERS,
            num_attention_heads=V_HEADS,
            image_size=[tile, tile],
            patch_size=[patch, patch],
        ),
        image_token_id=tok.context_image_token_id,
        image_seq_length=tokens,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
    )
    # Tiling as in the real processor, capped at 4 tiles (+ thumbnail) to stay tiny.
    ip = GotOcr2ImageProcessorPil(size={"height": tile, "width": tile}, crop_to_patches=True, max_patches=4)
    return config, ip, InternVLProcessor, dict(image_seq_length=tokens)


_QWEN_TOKENS = (
    "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
)  # fmt: skip


def _qwen_family(build: Callable, template: str = _QWEN_TEMPLATE, extra: tuple[str, ...] = ()) -> _Family:
    """Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3.5 share their tokens and turns; their models differ."""
    return _Family(
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", add_bos=False,
        named_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}, extra_tokens=_QWEN_TOKENS + extra,
        chat_template=template, build=build, generation_eos=("<|im_end|>", "<|endoftext|>"),
    )


FAMILIES: dict[str, _Family] = {
    "llava": _Family(
        bos="<s>", eos="</s>", pad="<pad>", add_bos=True,
        named_tokens={"image_token": "<image>"}, extra_tokens=(),
        chat_template=_LLAVA_TEMPLATE, build=_build_llava,
    ),
    "llava_next": _Family(
        bos="<s>", eos="</s>", pad="<pad>", add_bos=True,
        named_tokens={"image_token": "<image>"}, extra_tokens=(),  # [INST] is plain text in Mistral v0.2
        chat_template=_LLAVA_NEXT_TEMPLATE, build=_build_llava_next,
    ),
    "llava_onevision": _Family(
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", add_bos=False,
        named_tokens={"image_token": "<image>", "video_token": "<video>"}, extra_tokens=("<|im_start|>", "<|im_end|>"),
        chat_template=_ONEVISION_TEMPLATE, build=_build_llava_onevision,
        generation_eos=("<|im_end|>", "<|endoftext|>"),
    ),
    "qwen2_vl": _qwen_family(_build_qwen2_vl),
    "qwen2_5_vl": _qwen_family(_build_qwen2_5_vl),
    "qwen3_vl": _qwen_family(_build_qwen3_vl),
    "qwen3_vl_moe": _qwen_family(_build_qwen3_vl_moe),
    "qwen3_5": _qwen_family(_build_qwen3_5, _QWEN3_5_TEMPLATE, ("<think>", "</think>")),
    "qwen3_5_moe": _qwen_family(_build_qwen3_5_moe, _QWEN3_5_TEMPLATE, ("<think>", "</think>")),
    "mistral3": _Family(
        bos="<s>", eos="</s>", pad="<pad>", add_bos=True,
        named_tokens={}, extra_tokens=("[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"),
        chat_template=_MISTRAL3_TEMPLATE, build=_build_mistral3,
    ),  # fmt: skip
    "llama4": _Family(
        bos="<|begin_of_text|>", eos="<|eot|>", pad="<|finetune_right_pad|>", add_bos=True,
        named_tokens={}, extra_tokens=("<|header_start|>", "<|header_end|>", "<|image_start|>", "<|image_end|>", "<|image|>",
                                       "<|patch|>", "<|tile_x_separator|>", "<|tile_y_separator|>"),
        chat_template=_LLAMA4_TEMPLATE, build=_build_llama4,
    ),  # fmt: skip
    "molmo2": _Family(
        bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>", add_bos=False,
        named_tokens={"image_token": "<|image|>", "video_token": "<|video|>"},
        extra_tokens=("<|im_start|>", "<im_patch>", "<im_col>", "<im_start>", "<low_res_im_start>", "<frame_start>",
                      "<im_end>", "<frame_end>", "<im_low>"),
        chat_template=_MOLMO2_TEMPLATE, build=_build_molmo2, generation_eos=("<|im_end|>", "<|endoftext|>"),
    ),  # fmt: skip
    "glm4v": _Family(
        bos=None, eos="<|endoftext|>", pad="<|endoftext|>", add_bos=False,
        named_tokens={"image_token": "<|image|>", "video_token": "<|video|>"},
        extra_tokens=("[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
                      "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>"),
        chat_template=_GLM4V_TEMPLATE, build=_build_glm4v,
        generation_eos=("<|endoftext|>", "<|user|>", "<|observation|>"),
    ),  # fmt: skip
    "idefics3": _Family(
        bos="<|begin_of_text|>", eos="<|end_of_text|>", pad="<|reserved_special_token_0|>", add_bos=True,
        named_tokens={},
        extra_tokens=("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>",
                      *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))),
        chat_template=_IDEFICS3_TEMPLATE, build=_build_idefics3,
        generation_eos=("<|end_of_text|>", "<end_of_utterance>"),
    ),  # fmt: skip
    "gemma3": _Family(
        bos="<bos>", eos="<eos>", pad="<pad>", add_bos=True,
        named_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                      "image_token": "<image_soft_token>"},
        extra_tokens=("<start_of_turn>", "<end_of_turn>"),
        chat_template=_GEMMA3_TEMPLATE, build=_build_gemma3,
        generation_eos=("<eos>", "<end_of_turn>"),
    ),  # fmt: skip
    "gemma4": _Family(
        bos="<bos>", eos="<eos>", pad="<pad>", add_bos=True,
        named_tokens={"boi_token": "<|image>", "eoi_token": "<image|>", "image_token": "<|image|>",
                      "boa_token": "<|audio>", "eoa_token": "<audio|>", "audio_token": "<|audio|>"},
        extra_tokens=("<|turn>", "<turn|>", "<|video|>"),
        chat_template=_GEMMA4_TEMPLATE, build=_build_gemma4, learnt=_gemma4_layer_scales,
        generation_eos=("<eos>", "<turn|>"),
    ),  # fmt: skip
    "internvl": _Family(
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", add_bos=False,
        named_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                      "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
        extra_tokens=("<|im_start|>", "<|im_end|>"),
        chat_template=_INTERNVL_TEMPLATE, build=_build_internvl,
        generation_eos=("<|im_end|>", "<|endoftext|>"),
    ),  # fmt: skip
}


# ------------------------------------------------------------------------------------------- saving


def save_tiny_model(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Build a random-weight tiny checkpoint of `family` and save model + processor into `out_dir`."""
    from transformers import AutoModelForImageTextToText, GenerationConfig

    from .processor_loading import assemble_processor

    if family not in FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {', '.join(TINY_FAMILIES)}")
    spec = FAMILIES[family]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tok = _tokenizer(spec)
    config, image_processor, processor_class, processor_kwargs = spec.build(tok)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config)
        if spec.learnt is not None:
            spec.learnt(model)
    eos_ids = _ids(tok, *(spec.generation_eos or (spec.eos,)))
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=eos_ids if len(eos_ids) > 1 else eos_ids[0],
        pad_token_id=tok.pad_token_id,
    )
    model.save_pretrained(out)

    processor = assemble_processor(
        processor_class, tokenizer=tok, image_processor=image_processor,
        chat_template=spec.chat_template, **processor_kwargs,
    )  # fmt: skip
    if getattr(processor, "video_processor", ...) is None:
        _save_without_video(processor, processor_class, processor_kwargs, out)
    else:
        processor.save_pretrained(out)
    return out


def _save_without_video(processor, processor_class, processor_kwargs: dict, out: Path) -> None:
    """Save a processor whose video slot is empty, in the layout of the real checkpoints.

    `ProcessorMixin.save_pretrained` serialises every sub-processor and breaks on the empty video slot
    (which only torchvision could fill), so the parts are written one by one.
    """
    processor.tokenizer._set_processor_class(processor_class.__name__)
    processor.tokenizer.save_pretrained(out)
    processor.image_processor.save_pretrained(out)
    (out / "chat_template.jinja").write_text(processor.chat_template, encoding="utf-8")
    # the other sub-processors (Gemma 4's audio feature extractor) nest in processor_config.json, as
    # transformers itself writes them
    settings = {k: json.loads(v.to_json_string()) if hasattr(v, "to_json_string") else v for k, v in processor_kwargs.items()}
    config = {"processor_class": processor_class.__name__, **settings}
    (out / "processor_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
