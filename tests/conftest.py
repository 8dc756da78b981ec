import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from PIL import Image  # noqa: E402

FAMILIES = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3", "gemma3", "internvl")


@pytest.fixture(scope="session", autouse=True)
def tiny_cache(tmp_path_factory):
    """Tiny models are built once per test session into a private cache, never a user's."""
    path = tmp_path_factory.mktemp("mllm_arb_cache")
    old = os.environ.get("MLLM_ARB_CACHE")
    os.environ["MLLM_ARB_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MLLM_ARB_CACHE", None)
    else:
        os.environ["MLLM_ARB_CACHE"] = old


def solid_image(rgb=(200, 30, 30), size=40) -> Image.Image:
    return Image.new("RGB", (size, size), rgb)


def conflict_items(n: int = 4):
    """Items whose contexts differ in length, so a batch needs padding."""
    from mllm_arb.data.records import ConflictItem

    colours = [("red", "green", (200, 30, 30)), ("blue", "yellow", (30, 30, 200)), ("green", "red", (30, 200, 30)), ("yellow", "blue", (220, 220, 30))]
    items = []
    for k in range(n):
        img_answer, txt_answer, rgb = colours[k % len(colours)]
        items.append(
            ConflictItem(
                item_id=f"item{k}",
                task="color",
                question="What color is the umbrella?",
                answer_image=img_answer,
                answer_text=txt_answer,
                context=f"The man is holding a {txt_answer} umbrella" + " under the sky" * k + ".",
                consistent_context=f"The man is holding a {img_answer} umbrella.",
                image=solid_image(rgb),
            )
        )
    return items
