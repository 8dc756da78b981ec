"""Load the processor of any supported family, also on machines without torchvision.

Qwen2-VL, Qwen2.5-VL, InternVL and SmolVLM processors own a video sub-processor, and video processors
need torchvision. Without it `AutoProcessor` cannot build them even though images never touch the video
slot, so we load the tokenizer and image processor on their own and leave the video slot empty.

Mistral 3's `PixtralProcessor` owns no video slot, but transformers' module for it imports torchvision
when it loads (for a resize helper that its PIL image processor does not use): without torchvision the
class is a placeholder that refuses to build. `PixtralProcessor` below lays out the prompt the same way
on the PIL image processor, and loads in its place from the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, ProcessorMixin
from transformers.utils import is_torchvision_available


class PixtralProcessor(ProcessorMixin):
    """Mistral 3's prompt layout without torchvision: each image becomes rows of `image_token`, one per
    merged patch (`patch_size × spatial_merge_size` pixels, the size the image processor resizes to a
    multiple of), each row closed by `image_break_token` and the last by `image_end_token` instead. The
    model checks the count: it refuses a prompt whose image tokens do not match its vision features."""

    def __init__(self, image_processor=None, tokenizer=None, patch_size: int = 16, spatial_merge_size: int = 1,
                 chat_template=None, image_token: str = "[IMG]", image_break_token: str = "[IMG_BREAK]",
                 image_end_token: str = "[IMG_END]", **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.patch_size, self.spatial_merge_size = int(patch_size), int(spatial_merge_size)
        self.image_token, self.image_break_token, self.image_end_token = image_token, image_break_token, image_end_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)

    @property
    def image_token_ids(self) -> list[int]:
        return self.tokenizer.convert_tokens_to_ids([self.image_token, self.image_break_token, self.image_end_token])

    def _process_images(self, images, **kwargs):
        kwargs["patch_size"] = self.patch_size * self.spatial_merge_size
        return super()._process_images(images, **kwargs)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        step = self.patch_size * self.spatial_merge_size
        height, width = (int(v) for v in image_inputs["image_sizes"][image_idx])
        rows = [self.image_token * (width // step) + self.image_break_token] * (height // step)
        return "".join(rows)[: -len(self.image_break_token)] + self.image_end_token

    @property
    def model_input_names(self):
        return self.tokenizer.model_input_names + self.image_processor.model_input_names + ["image_sizes"]


#: processors that transformers cannot build without torchvision although images never need it, by the
#: name a checkpoint gives them, and the class that builds them here
_TWINS = {"PixtralProcessor": PixtralProcessor}


def _image_twins() -> dict:
    """Image processors transformers has only on torchvision, by the type a checkpoint names, and their
    PIL twins here (`image_processing.py`)."""
    from .image_processing import Llama4ImageProcessorPil, Molmo2ImageProcessorPil

    return {"Llama4ImageProcessor": Llama4ImageProcessorPil, "Molmo2ImageProcessor": Molmo2ImageProcessorPil}

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def load_processor(path_or_id: str | Path) -> ProcessorMixin:
    """The processor saved in a local directory or in the hub cache (offline: nothing is downloaded)."""
    path = _resolve(path_or_id)
    if not (_has_any(path, _TOKENIZER_FILES) and _has_any(path, _IMAGE_PROCESSOR_FILES)):
        raise ValueError(f"no processor in {path}: it needs tokenizer files and a preprocessor/processor config")
    try:
        return AutoProcessor.from_pretrained(path)
    except (ImportError, ValueError) as err:
        missing_torchvision = not is_torchvision_available() and "torchvision" in str(err).lower()
        twin = _TWINS.get(_processor_name(path)) if missing_torchvision else None
        if twin is not None:
            return twin.from_pretrained(path)
        processor_class = _processor_class(path)
        twin_images = missing_torchvision and _twin_of(_image_settings(path)) is not None
        if not (missing_torchvision and processor_class is not None and (_owns_video(processor_class) or twin_images)):
            raise
    return _load_guarded(path, processor_class)


def assemble_processor(processor_class: type[ProcessorMixin], **parts) -> ProcessorMixin:
    """`processor_class(**parts)`, allowing an empty video slot and a PIL twin (see the module docstring)."""
    if _owns_video(processor_class) and parts.get("video_processor") is None:
        processor_class = _guarded(processor_class)
        parts["video_processor"] = None
    elif type(parts.get("image_processor")) in _image_twins().values():
        processor_class = _guarded(processor_class)
    return processor_class(**parts)


def _resolve(path_or_id: str | Path) -> Path:
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"expected a directory holding a processor, got a file: {path}")
    from huggingface_hub import snapshot_download

    try:  # maybe a hub id whose snapshot is cached
        return Path(snapshot_download(str(path_or_id), local_files_only=True))
    except (OSError, ValueError):  # not cached, or not a valid hub id
        raise FileNotFoundError(f"no such directory, nor a cached hub snapshot: {path_or_id}") from None


def _has_any(path: Path, names: tuple[str, ...]) -> bool:
    return any((path / name).is_file() for name in names)


def _processor_name(path: Path) -> str | None:
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    name = None
    for file in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        name = name or _json(path / file).get("processor_class")
    if name is None:  # old checkpoints name their processor only through the model type
        name = PROCESSOR_MAPPING_NAMES.get(_json(path / "config.json").get("model_type"))
    return name


def _processor_class(path: Path) -> type[ProcessorMixin] | None:
    from transformers.models.auto.processing_auto import processor_class_from_name

    name = _processor_name(path)
    return processor_class_from_name(name) if name else None


def _json(file: Path) -> dict:
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}


def _owns_video(processor_class: type[ProcessorMixin]) -> bool:
    return "video_processor" in processor_class.get_attributes()


def _twin_of(settings: dict):
    """The PIL twin for an image processor's settings, or None; checkpoints saved by transformers 4 name the
    torchvision class with its `Fast` suffix."""
    return _image_twins().get(str(settings.get("image_processor_type") or "").removesuffix("Fast"))


def _image_settings(path: Path) -> dict:
    """The image processor's settings: preprocessor_config.json, or nested in processor_config.json."""
    return _json(path / "preprocessor_config.json") or _json(path / "processor_config.json").get("image_processor") or {}


def _image_processor(path: Path):
    """The checkpoint's image processor, or its PIL twin where transformers has it only on torchvision."""
    settings = _image_settings(path)
    twin = _twin_of(settings) if not is_torchvision_available() else None
    return twin.from_dict(settings) if twin is not None else AutoImageProcessor.from_pretrained(path)


def _load_guarded(path: Path, processor_class: type[ProcessorMixin]) -> ProcessorMixin:
    parts = {
        "tokenizer": AutoTokenizer.from_pretrained(path),
        "image_processor": _image_processor(path),
        "video_processor": None,
    }
    guarded = _guarded(processor_class)
    # get_processor_dict gathers the processor's own settings and chat template the way from_pretrained does.
    processor_dict, _ = guarded.get_processor_dict(path)
    processor_dict.pop("image_processor", None)  # built above
    for name in guarded.get_attributes():
        if name not in parts:  # another sub-processor (Gemma 4's audio feature extractor), nested in processor_config.json
            parts[name] = _nested(processor_dict.pop(name, None), name, path)
    args = [parts[name] for name in guarded.get_attributes()]
    return guarded.from_args_and_dict(args, processor_dict)


def _nested(settings, name: str, path: Path):
    """A sub-processor saved as a dictionary inside processor_config.json, built by the class it names."""
    import transformers

    kind = (settings or {}).get(f"{name}_type") or (settings or {}).get("feature_extractor_type")
    if not kind or not hasattr(transformers, kind):
        raise ValueError(f"the processor in {path} has no usable {name} settings in processor_config.json")
    return getattr(transformers, kind).from_dict(settings)


def _guarded(processor_class: type[ProcessorMixin]) -> type[ProcessorMixin]:
    from transformers import SmolVLMProcessor

    class Guarded(processor_class):
        # The type check of sub-processors would reject the empty video slot and a PIL twin; everything else is checked.
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            if argument_name == "image_processor" and type(argument) in _image_twins().values():
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

        # SmolVLM's override reads frame-sampling defaults off the video processor even for image-only
        # chats, and adds nothing else for images: use the generic template rendering instead.
        def apply_chat_template(self, conversation, chat_template=None, **kwargs):
            if isinstance(self, SmolVLMProcessor):
                return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)
            return super().apply_chat_template(conversation, chat_template, **kwargs)

    Guarded.__name__ = Guarded.__qualname__ = processor_class.__name__
    return Guarded
