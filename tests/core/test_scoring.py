import math

import pytest
import torch

from mllm_arb.core.errors import UserError
from mllm_arb.core.prompt import render
from mllm_arb.core.records import Condition, ConflictItem
from mllm_arb.core.scoring import AnswerIds, binary_scores, classify_generation, surface_variants

from ..conftest import solid_image


def test_surface_variants_cover_case_space_and_synonyms():
    v = surface_variants("Red", ["crimson"])
    for form in ("Red", "red", " red", "RED", " Red", "crimson", " Crimson"):
        assert form in v
    assert len(v) == len(set(v))


def test_binary_scores_match_hand_computation():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    log_odds, p, mass = binary_scores(logits, [AnswerIds(following=(0, 1), competitor=(3,))])
    assert math.isclose(float(p[0]), 0.3 / 0.7, rel_tol=1e-5)
    assert math.isclose(float(log_odds[0]), math.log(0.3 / 0.4), rel_tol=1e-5)
    assert math.isclose(float(mass[0]), 0.7, rel_tol=1e-5)


def test_binary_scores_of_many_rows_equal_one_logsumexp_per_row_bit_for_bit():
    """Rows with different numbers of answer tokens (1 to 10: a padded gather differs in the last bit from
    about 6 on) are scored a few at a time: the same numbers, exactly."""
    torch.manual_seed(0)
    logits = torch.randn(40, 200) * 6
    ids = [AnswerIds(following=tuple(range(i % 10 + 1)), competitor=tuple(range(50, 50 + (7 * i) % 10 + 1))) for i in range(40)]
    log_odds, p, mass = binary_scores(logits, ids)
    logp = torch.log_softmax(logits, -1)
    for i, a in enumerate(ids):
        lf, lc = torch.logsumexp(logp[i, list(a.following)], 0), torch.logsumexp(logp[i, list(a.competitor)], 0)
        assert torch.equal(log_odds[i], lf - lc)
        assert torch.equal(mass[i], torch.exp(torch.logaddexp(lf, lc)))


def test_render_swaps_following_by_condition():
    item = ConflictItem("a", "color", "What color?", "red", "green", "It is green.", solid_image(), "It is red.")
    assert render(item, Condition.TEXT_FOLLOWING).following == "green"
    assert render(item, Condition.VISION_FOLLOWING).following == "red"
    assert render(item, Condition.IMAGE_ONLY).context is None
    assert render(item, Condition.TEXT_ONLY).image is None
    assert render(item, Condition.NO_INSTRUCTION).instruction is None
    assert render(item, Condition.CONSISTENT).context == "It is red."


def test_equal_answers_are_rejected():
    with pytest.raises(ValueError, match="no conflict"):
        ConflictItem("a", "color", "What color?", "Red", "red ", "It is red.", solid_image())


def test_answers_sharing_every_first_token_get_a_clear_error():
    from transformers import AutoTokenizer  # noqa: F401  (tokenizer comes from a tiny model below)

    from mllm_arb.models.loading import load_adapter
    from mllm_arb.core.scoring import answer_ids

    adapter = load_adapter("tiny:llava")
    item = ConflictItem("a", "color", "What color?", "blue sky", "blue", "It is blue.", solid_image())
    with pytest.raises(UserError, match="tells it apart"):
        answer_ids(adapter.tokenizer, render(item, Condition.TEXT_FOLLOWING))


def test_generation_is_classified():
    item = ConflictItem("a", "color", "What color?", "red", "light green", "It is green.", solid_image())
    s = render(item, Condition.VISION_FOLLOWING)
    assert classify_generation("Red.", s) == "following"
    assert classify_generation(" light green umbrella", s) == "competitor"
    assert classify_generation("purple", s) == "other"
    assert classify_generation("", s) == "other"


def test_a_variant_outside_the_vocabulary_is_never_an_answer_token():
    """The organism's word-level tokenizer knows "red" but not "RED": the all-caps variant must not add the
    unknown token to the answer's ids (it would match every unknown word)."""
    from transformers import AutoTokenizer

    from mllm_arb.core.paths import checkpoint_path
    from mllm_arb.core.scoring import first_token_ids

    tok = AutoTokenizer.from_pretrained(str(checkpoint_path()))
    assert tok.unk_token_id is not None and tok("RED", add_special_tokens=False)["input_ids"][0] == tok.unk_token_id
    assert first_token_ids(tok, ["RED"]) == set()
    assert tok.unk_token_id not in first_token_ids(tok, surface_variants("red"))
    assert first_token_ids(tok, ["red"]) == {tok("red", add_special_tokens=False)["input_ids"][0]}
