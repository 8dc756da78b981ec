"""Between-layer residual writers (Qwen3-VL's DeepStack): recorded from the model's own calls, replayed
exactly, cleaned up after, and absent for families without one."""

import torch

from mllm_arb.core.prompt import render_all
from mllm_arb.core.records import Condition
from mllm_arb.interventions.gaps import record_gaps
from mllm_arb.interventions.prefix import PrefixRun
from mllm_arb.models.loading import load_adapter

from ..conftest import conflict_items


def _batch(family):
    adapter = load_adapter(f"tiny:{family}")
    return adapter, adapter.build_batch(render_all(conflict_items(3), [Condition.VISION_FOLLOWING]))


def test_deepstack_writes_are_recorded_per_layer_at_image_positions_and_nested_recorders_both_see_them():
    adapter, batch = _batch("qwen3_vl")
    owner = adapter.parts.text_model
    with torch.no_grad(), record_gaps(adapter) as outer, record_gaps(adapter) as inner:
        adapter.model(**batch.inputs, use_cache=False)
    assert "_deepstack_process" not in owner.__dict__  # the instance is as it was
    n_deep = len(adapter.model.config.vision_config.deepstack_visual_indexes)
    assert sorted(outer.writes) == sorted(inner.writes) == list(range(n_deep))
    image = batch.group_mask("image").to(torch.bool)
    for write in outer.writes.values():
        assert torch.equal(write.positions.cpu(), image.cpu()) and write.values.shape[0] == int(image.sum())


def test_replaying_the_writes_from_the_first_layer_gives_the_model_own_logits():
    adapter, batch = _batch("qwen3_vl")
    run = PrefixRun(adapter, batch)
    assert run.gaps
    hidden = next(run.states())[1]
    torch.testing.assert_close(run.resume(0, hidden), run.logits, atol=1e-5, rtol=1e-5)
    without = dict(run.gaps.writes)
    run.gaps.writes.clear()  # the same resume without DeepStack's writes is another model
    assert not torch.allclose(run.resume(0, hidden), run.logits, atol=1e-4)
    run.gaps.writes.update(without)


def test_a_family_without_a_between_layer_writer_records_nothing():
    adapter, batch = _batch("llava")
    with torch.no_grad(), record_gaps(adapter) as gaps:
        adapter.model(**batch.inputs, use_cache=False)
    assert not gaps and gaps.method is None
