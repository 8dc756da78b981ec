"""The prepared GPU benchmark (`python -m benchmarks.gpu`) runs end to end at toy sizes on the CPU, so the
script a GPU session would run is known to work before one is lent."""

from benchmarks import gpu


def test_the_gpu_benchmark_runs_at_toy_sizes(tmp_path, capsys):
    out = tmp_path / "gpu.md"
    assert gpu.main(["--smoke", "--out", str(out)]) == 0
    table = out.read_text()
    for model in ("random-llava-7b-shape-smoke", "random-qwen2.5-vl-7b-shape-smoke"):
        for bench in ("knockout sweep", "head scan (all positions)", "head scan (last positions)", "blocking/amplification arms", "attribution ranking"):
            assert any(bench in line and model in line for line in table.splitlines()), (bench, model)
    assert "16 image tokens" in capsys.readouterr().out


def test_the_full_sizes_are_the_7b_shapes():
    """The shapes the issue names: 7B LLaVA 32 × 32, d 4096, 576 image tokens; Qwen2.5-VL-7B 28 layers."""
    llava = gpu.LLAVA_7B
    assert (llava["text_layers"], llava["text_heads"], llava["text_hidden"]) == (32, 32, 4096)
    assert (llava["image_size"] // llava["patch_size"]) ** 2 == 576
    qwen = gpu.QWEN25_7B
    assert (qwen["num_hidden_layers"], qwen["num_attention_heads"], qwen["hidden_size"]) == (28, 28, 3584)
    merge, patch = gpu.QWEN25_VISION["spatial_merge_size"], gpu.QWEN25_VISION["patch_size"]
    assert gpu.QWEN_IMAGE_PIXELS // (patch * merge) ** 2 == 576


def test_without_a_gpu_it_says_so_and_exits_2(capsys):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the full benchmark would run")
    assert gpu.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_the_gpu_identity_script_holds_in_bfloat16_on_the_cpu(tmp_path):
    """`python -m benchmarks.gpu_identities` (every family's identities in bfloat16) checked on two families
    on the CPU, so that the script a GPU session runs is known to work; without a GPU and without --cpu it
    says so and exits 2."""
    import torch

    from benchmarks import gpu_identities

    out = tmp_path / "identities.md"
    assert gpu_identities.main(["--cpu", "--families", "llava", "qwen3_vl", "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| llava") or line.startswith("| qwen3_vl")]
    assert len(rows) == 14 and all(line.endswith("| yes |") for line in rows)
    assert "bfloat16" in out.read_text()
    if not torch.cuda.is_available():
        assert gpu_identities.main(["--out", str(out)]) == 2
