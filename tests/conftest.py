import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # xdist's workers set an 80-column terminal; the suite reads output as a log does (no terminal, wide tables)
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)

import json  # noqa: E402
import logging  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
from PIL import Image  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

# transformers binds its log handler to the stderr of its first log call: make that the session's, not the
# stream of a CLI run inside a test (closed after it, so a later warning would print "Logging error")
hf_logging.get_verbosity()

FAMILIES = ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe", "mistral3", "llama4", "molmo2", "glm4v", "idefics3", "gemma3", "gemma4", "internvl")


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
    from mllm_arb.core.records import ConflictItem

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


# ------------------------------------------------------------------------------ running the CLI
def invoke(*args):
    """`mllm-arb ARGS` in this process; a traceback in the output fails the test."""
    from typer.testing import CliRunner

    from mllm_arb.cli import app

    # a grid run configures logging as Hydra's launcher does, handlers bound to this run's captured streams:
    # the next test must not log into them once they are closed
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        result = CliRunner().invoke(app, list(args))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert "Traceback" not in result.output
    return result


def only_run(root, command):
    """The one run directory `command` wrote below `root`."""
    runs = [p for p in (root / command).glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def write_items(folder, items=None, corrupt=False):
    """`items` (default: three conflict items) as a jsonl file with PNG images beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for it in items if items is not None else conflict_items(3):
        name = f"{it.item_id}.png"
        if corrupt:
            (folder / name).write_bytes(b"not a png at all")
        else:
            it.image.save(folder / name)
        rec = {k: getattr(it, k) for k in ("item_id", "task", "question", "answer_image", "answer_text", "context", "consistent_context")}
        lines.append(json.dumps({**rec, "image": name}))
    path = folder / "items.jsonl"
    path.write_text("\n".join(lines) + ("\n" if lines else ""))
    return path


def torchrun(*args, n=2, script=None):
    """`torchrun --nproc-per-node n -m mllm_arb.cli ARGS` (or a script instead of the CLI module)."""
    target = [str(script)] if script else ["-m", "mllm_arb.cli"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", *target, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def unit_ranks(run):
    return {p.parent.name + "/" + p.stem: json.loads(p.read_text())["rank"] for p in (run / "partial").glob("*/*.json")}


def one_thread_invoke(*args):
    """The single-process reference on one thread, like each torchrun rank: bit-identical results need the
    same reductions (a backward pass summed over 2 threads differs from 1 in the last bits)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return invoke(*args)
    finally:
        torch.set_num_threads(threads)
