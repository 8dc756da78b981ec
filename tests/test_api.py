"""The Python API (`mllm_arb.api`, re-exported at the top level) on a tiny model saved to disk: the same
numbers as the stage code, its identities, and clear errors."""

import pytest
import torch

import mllm_arb as ma
from mllm_arb.core.errors import UserError
from mllm_arb.core.scoring import binary_scores

from .conftest import conflict_items


@pytest.fixture(scope="module")
def tiny():
    return ma.load("tiny:llava")


def test_the_top_level_exports_the_api_lazily():
    import subprocess
    import sys

    code = "import sys, mllm_arb; assert 'torch' not in sys.modules; mllm_arb.load; assert 'torch' in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    with pytest.raises(AttributeError):
        ma.no_such_function


def test_a_conflict_batch_scores_like_the_stage_code(tiny):
    batch = ma.conflict_batch(tiny, conflict_items(3), "vision_following")
    assert len(batch) == 3 and batch.group("image").sum(1).min() > 0
    assert "image" in batch.group_text("instruction").lower()
    expected = binary_scores(tiny.last_logits(batch.batch), batch.ids)[0]
    torch.testing.assert_close(ma.log_odds(tiny, batch), expected)
    assert torch.equal(ma.follows(tiny, batch), expected > 0)


def test_no_op_edits_are_identities_and_the_lens_ends_at_the_logits(tiny):
    batch = ma.conflict_batch(tiny, conflict_items(3), "text_following")
    base = ma.log_odds(tiny, batch)
    with ma.edit_heads(tiny, [(0, 0), (1, 1)], scale=1.0):
        assert torch.equal(ma.log_odds(tiny, batch), base)
    with ma.knock_out(tiny, batch, [("context", "last")], layers=[]):
        assert torch.equal(ma.log_odds(tiny, batch), base)
    with ma.knock_out(tiny, batch, [("context", "last"), ("context", "instruction")], layers=range(tiny.parts.n_layers)):
        assert not torch.allclose(ma.log_odds(tiny, batch), base)
    with ma.edit_heads(tiny, [(0, 0)], scale=0.0, positions="last", batch=batch):
        assert not torch.equal(ma.log_odds(tiny, batch), base)
    assert torch.equal(ma.log_odds(tiny, batch), base)  # every hook removed on exit
    lens = ma.lens(tiny, batch)
    assert lens.shape == (3, tiny.parts.n_layers + 1)
    torch.testing.assert_close(lens[:, -1], base, atol=1e-4, rtol=0)
    parts = ma.contributions(tiny, batch)
    total = parts.difference[:, 0].sum((-1, -2)) + (parts.start_following - parts.start_competitor)[:, 0]
    torch.testing.assert_close(total, base, atol=1e-4, rtol=0)
    assert ma.lens(tiny, batch, "instruction").shape == lens.shape


def test_bad_api_input_is_a_clear_error(tiny, tmp_path):
    batch = ma.conflict_batch(tiny, conflict_items(2), "image_only")
    with pytest.raises(ValueError, match="unknown token group 'answer'"):
        batch.group("answer")
    with pytest.raises(ValueError, match="unknown token group 'picture'"):
        with ma.knock_out(tiny, batch, [("picture", "last")], [0]):
            pass
    with pytest.raises(ValueError, match="no 'instruction' tokens"):
        ma.lens(tiny, batch, "instruction")
    with pytest.raises(ValueError, match="give the condition"):
        ma.conflict_batch(tiny, conflict_items(2))
    with pytest.raises(UserError, match="does not exist"):
        ma.load(str(tmp_path / "nothing"))
