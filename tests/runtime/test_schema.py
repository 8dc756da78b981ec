"""Typed configuration: every key has a type and a range (runtime/schema.py), checked when the config is
composed, so a bad value is one line and exit 2 before any run folder exists."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import MISSING, OmegaConf

from mllm_arb.runtime import schema
from mllm_arb.runtime.config import resolved

from ..conftest import invoke

BAD = {  # override -> what the one line must say
    "batch_size=0": "batch_size=0: must be at least 1",
    "batch_size=-2": "batch_size=-2: must be at least 1",
    "batch_size=abc": "batch_size=abc",
    "seed=abc": "seed=abc",
    "scoring.n_boot=0": "scoring.n_boot=0: must be at least 10",
    "scoring.generate_tokens=-1": "scoring.generate_tokens=-1",
    "analysis.window=0": "analysis.window=0: must be at least 1",
    "analysis.window=1.5": "analysis.window=1.5",
    "analysis.max_items=-1": "analysis.max_items=-1",
    "analysis.findings.agreement=1.5": "analysis.findings.agreement=1.5: must be at most 1",
    "data.limit=0": "data.limit=0: must be at least 1",
    "data.limit=-1": "data.limit=-1",
    "data.n_items=x": "data.n_items=x",
    "data.families=[bogus]": "data.families='bogus'",
    "data.families=[]": "data.families=[] must name at least one value",
    "conditions=[]": "conditions=[] must name at least one value",
    "analysis.edges=[]": "analysis.edges=[] must name at least one value",
    "sweep.alphas=5": "sweep.alphas=5",
    "sweep.alphas=[]": "sweep.alphas=[]",
    "sweep.rank_fraction=1": "sweep.rank_fraction=1",
    "sweep.interactions=-1": "sweep.interactions=-1",
    "sweep.ablation=half": "sweep.ablation='half'",
    "model.dtype=int8": "model.dtype='int8'",
    "model.padding_side=middle": "model.padding_side='middle'",
    "validate.min_effect=-0.1": "validate.min_effect=-0.1",
    "data.bogus=1": "bogus",
    "analysis.findings.transfer_peak=nan": "analysis.findings.transfer_peak=nan",
}


@pytest.mark.parametrize("override", list(BAD))
def test_a_bad_value_is_one_line_naming_the_key_and_writes_nothing(override, tmp_path):
    out = tmp_path / "out"
    result = invoke("evaluate", override, f"output_dir={out}")
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and BAD[override] in lines[0], result.output
    assert not out.exists()


def test_the_defaults_satisfy_the_schema_and_live_only_in_the_yaml():
    for source in schema.DATA:
        cfg = resolved([f"data={source}"] + ([f"data.path=x"] if source in ("jsonl", "disk") else []))
        schema.check_ranges(cfg)
        OmegaConf.to_object(cfg)  # every value fits its declared type

    def fields_of(cls):
        for f in dataclasses.fields(cls):
            sub = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
            if dataclasses.is_dataclass(sub):
                yield from fields_of(type(sub))
            else:
                yield cls, f

    for cls in (schema.RootSchema, *schema.DATA.values()):
        with_default = [f"{c.__name__}.{f.name}" for c, f in fields_of(cls) if f.default is not MISSING and f.name != "data"]
        assert not with_default  # one source of defaults: the YAML files
