"""`mllm-arb report`: the page of one study and the comparison of models, checked as HTML and in a real
browser (headless Chromium, skipped only where it is not installed)."""

import io
import json
import os
import re
import shutil

import pytest
from PIL import Image, ImageStat

from mllm_arb.core.paths import CHECKPOINT_DIR
from mllm_arb.report.browser import check_page, find_chromium
from mllm_arb.report.study import read_run

from ..conftest import conflict_items
from ..conftest import invoke, only_run, write_items

SECTIONS = ["provenance", "behaviour", "flow", "components", "findings", "heads", "blocking", "amplification", "controls"]
EDGES = "analysis.edges=[context:instruction,image:instruction,image:last]"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """evaluate + analyze of one small run: on the shipped organism when its checkpoint is there, else on a
    tiny random-weight LLaVA."""
    root = tmp_path_factory.mktemp("report")
    out = root / "out"
    if (CHECKPOINT_DIR / "config.json").exists():
        args = ["model=organism", "data.n_items=4"]
    else:
        args = ["model=llava_tiny", "data=jsonl", f"data.path={write_items(root / 'data', conflict_items(2))}"]
    args += ["batch_size=8", "scoring.n_boot=200", f"output_dir={out}"]
    for command, extra in (("evaluate", []), ("analyze", [EDGES])):
        result = invoke(command, *args, *extra)
        assert result.exit_code == 0, result.output
    return only_run(out, "evaluate"), only_run(out, "analyze")


MODEL_HEADS = (4, 4)  # layers × heads of the synthetic head stages
SETTINGS, CONTROLS = ["text_following", "vision_following"], ["image_only", "text_only", "consistent"]


def sweep_rows(rng, arms, n_items=6):
    """Per-sample rows as `pipeline.heads.arms.run_arms` writes them, with made-up log-odds: the top heads hurt."""
    rows = []
    for arm in arms:
        conds = SETTINGS + (CONTROLS if arm.get("controls") else [])
        for cond in conds:
            for i in range(n_items):
                before = float(rng.normal(1.0 if i % 3 else -1.0, 0.5))
                shift = {"top": -2.0 * (arm["scale"] == 0) + 1.5 * (arm["scale"] > 0)}.get(arm["set"], -0.2)
                after = before + shift * (cond in SETTINGS) + float(rng.normal(0, 0.1))
                rows.append({"study": arm["study"], "set": arm["set"], "k": arm.get("k"), "n_heads": arm["n"], "seed": arm.get("seed"),
                             "scale": arm["scale"], "heads": "", "condition": cond, "item_id": f"i{i}", "task": "color",
                             "log_odds_before": before, "log_odds_after": after, "follows_before": before > 0, "follows_after": after > 0})
    return rows


@pytest.fixture(scope="module")
def head_runs(study, tmp_path_factory):
    """rank-heads, ablate and amplify run directories of the same model, with results.json, heads.json and plots
    written by the head stages' own summaries and figure functions over synthetic per-sample rows (running
    the sweeps for real is a minute on CPU; `mllm-arb run` end to end is tested elsewhere)."""
    import numpy as np
    from omegaconf import OmegaConf

    from mllm_arb.core.heads_file import from_ranking, write_head_set
    from mllm_arb.pipeline.heads.methods import method_agreement, rank
    from mllm_arb.pipeline.heads.summaries import (
        summarise_amplification,
        summarise_blocking,
        summarise_dose,
        summarise_random_amplification,
    )
    from mllm_arb.report.head_figures import draw_amplification_figures, draw_blocking_figures, draw_rank_figures
    from mllm_arb.runtime.runs import RunDir

    ev, an = study
    cfg = OmegaConf.load(an / "config.yaml")
    model = read_run(an).model
    root = tmp_path_factory.mktemp("heads")
    rng = np.random.default_rng(0)
    n_layers, n_heads = MODEL_HEADS
    n = 2
    common = {"model": model, "dataset_fingerprint": json.loads((an / "manifest.json").read_text())["dataset_fingerprint"],
              "n_layers": n_layers, "n_heads": n_heads, "n_rank_items": 6, "n_eval_items": 6, "rank_method": "ablation",
              "ablation": "zero", "positions": "all", "n_selected": n, "fraction_selected": n / (n_layers * n_heads),
              "settings": SETTINGS, "controls": CONTROLS}

    scores = {m: {s: rng.normal(0, 1, (n_layers, n_heads)).tolist() for s in SETTINGS} for m in ("ablation", "dla")}
    for m in scores:
        scores[m]["pooled"] = np.mean([scores[m][s] for s in SETTINGS], axis=0).tolist()
    ranked = rank(scores["ablation"]["pooled"])
    head_set = from_ranking(ranked, n, model=model, n_layers=n_layers, n_heads=n_heads, method="ablation", rank_by="pooled")
    heads = [list(h) for h in head_set.heads]
    rank_results = {**common, "rank_by": "pooled", "heads": heads, "scores": scores,
                    "top": {m: [{"layer": l, "head": h, "score": v} for l, h, v in rank(s["pooled"])[:10]] for m, s in scores.items()},
                    "agreement": method_agreement({m: s["pooled"] for m, s in scores.items()}, n)}

    arms = [{"study": "headline", "set": "top", "n": n, "scale": 0.0, "controls": True},
            {"study": "headline", "set": "bottom", "n": n, "scale": 0.0, "controls": True}]
    arms += [{"study": "headline", "set": "random", "n": n, "scale": 0.0, "seed": k} for k in range(3)]
    for k in (0.125, 0.25):
        arms += [{"study": "dose", "set": name, "n": int(k * 16), "scale": 0.0, "k": k} for name in ("top", "bottom")]
        arms += [{"study": "dose", "set": "random", "n": int(k * 16), "scale": 0.0, "k": k, "seed": s} for s in range(2)]
    rows = sweep_rows(rng, arms)
    ablate_results = {**common, "heads": heads, "blocking": summarise_blocking(rows, SETTINGS, CONTROLS, n_boot=100),
                      "dose": summarise_dose(rows, SETTINGS, n_boot=100)}

    arms = [{"study": "amplify", "set": "top", "n": n, "scale": a, "controls": True} for a in (2.0, 4.0)]
    arms += [{"study": "amplify", "set": "random", "n": n, "scale": 2.0, "seed": k} for k in range(3)]
    rows = sweep_rows(rng, arms)
    amp = summarise_amplification(rows, SETTINGS, CONTROLS, n_boot=100)
    amp["random_at_best_alpha"] = summarise_random_amplification(rows, SETTINGS, n_boot=100)
    amplify_results = {**common, "heads": heads, "amplification": amp}

    runs = {}
    for command, results, draw in (("rank-heads", rank_results, draw_rank_figures), ("ablate", ablate_results, draw_blocking_figures),
                                   ("amplify", amplify_results, draw_amplification_figures)):
        run = RunDir.create(root, command, model, cfg)
        run.write_manifest(dataset_fingerprint=common["dataset_fingerprint"], model_source=str(cfg.model.path))
        run.write_json("results.json", results)
        write_head_set(run.file("heads.json"), head_set)
        draw(results, run.file("plots"), f"{model} (synthetic sweep)")
        runs[command] = run.path
    return runs


def figures(page: str) -> list[tuple[str, str]]:
    """(figure name, caption) of every figure, checking that each embeds its image as a data URI."""
    found = re.findall(r'<figure id="fig-[^"]+"[^>]*data-figure="([^"]+)"><img src="(data:image/(?:svg\+xml|png);base64,)[^"]+"'
                       r'[^>]*><figcaption><strong>Figure \d+\.</strong> ([^<]+)</figcaption></figure>', page)
    assert len(found) == page.count("<figure"), "every figure is an embedded image with a numbered caption"
    return [(name, caption) for name, _, caption in found]


def assert_self_contained(page: str) -> None:
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert not re.search(r"<script[^>]+src=", page)
    assert not re.search(r'(src|href)="(?!data:|#)', page), "nothing is loaded from outside the file"
    assert "Content-Security-Policy" in page and "default-src 'none'" in page


def test_report_tells_the_study_in_order(study):
    ev, an = study
    result = invoke("report", str(ev), str(an))
    assert result.exit_code == 0, result.output
    path = an / "report.html"  # several stages: the page goes to the latest stage's run
    page = path.read_text()
    assert_self_contained(page)
    ids = re.findall(r'<section id="([a-z-]+)"', page)
    assert ids == SECTIONS
    names = [n for n, _ in figures(page)]
    expected = {"mfr"} | set(read_run(an).plots)
    assert set(names) == expected and len(names) == len(expected)
    for _, caption in figures(page):
        assert caption.endswith(".") and caption.count(". ") == 0, f"one sentence: {caption}"
    # provenance: model, weights, dataset fingerprint, git sha, config of each stage
    manifest = json.loads((an / "manifest.json").read_text())
    assert manifest["dataset_fingerprint"] in page and manifest["config_hash"] in page
    assert page.count("Composed configuration of the") == 2
    # behaviour: every condition with its interval; findings: each claim with its verdict
    for cond in ("text-following", "vision-following", "no instruction", "consistent context", "image only", "text only"):
        assert cond in page
    findings = json.loads((an / "findings.json").read_text())
    for f in findings.values():
        assert html_text(f["claim"]) in page
    verdicts = re.findall(r'class="badge (yes|no|na)"', page.split('id="findings"')[1].split("</section>")[0])
    assert len(verdicts) == len(findings)
    # the stages not run are said plainly, each with the command that fills it
    for stage in ("rank-heads", "ablate", "amplify"):
        assert f'data-absent="{stage}"' in page and f"mllm-arb {stage}" in page
    assert 'data-stage="evaluate"' in page and "evaluate: run" in page


def html_text(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def test_a_single_stage_run_reports_what_it_has(study, tmp_path):
    _, an = study
    target = tmp_path / "one.html"
    result = invoke("report", str(an), "--out", str(target))
    assert result.exit_code == 0, result.output
    page = target.read_text()
    assert 'data-absent="evaluate"' in page  # no behaviour run given: said, and the analyze run's own MFR shown
    assert "MFR of the samples the analyze run used" in page
    assert {n for n, _ in figures(page)} == set(read_run(an).plots)


def test_a_run_parent_holds_its_report(study, head_runs, tmp_path):
    """A `run` directory as `mllm-arb run` lays it out: stage runs inside it, linked from its manifest."""
    ev, an = study
    model = read_run(an).model
    parent = tmp_path / "run" / model / "2026-01-01_00-00-00-abcdef12"
    stages = {}
    for stage in (ev, an, *head_runs.values()):
        command = read_run(stage).command
        rel = f"{command}/{model}/{stage.name}"
        shutil.copytree(stage, parent / rel, ignore=shutil.ignore_patterns("report.*"))
        stages[command] = rel
    (parent / "manifest.json").write_text(json.dumps({"command": "run", "created": "2026-01-01T00:00:00", "stages": stages}))
    (parent / "config.yaml").write_text((an / "config.yaml").read_text())
    (parent / "results.json").write_text(json.dumps({"stages": stages}))
    result = invoke("report", str(parent))
    assert result.exit_code == 0, result.output
    page = (parent / "report.html").read_text()
    assert re.findall(r'<section id="([a-z-]+)"', page) == SECTIONS
    assert "Chained by the <code>run</code>" in page and "data-absent" not in page and "not run" not in page
    assert page.count("Composed configuration of the") == 5


def test_head_sections_show_heatmaps_top_k_blocking_and_amplification(study, head_runs, tmp_path):
    ev, an = study
    target = tmp_path / "all.html"
    result = invoke("report", str(ev), str(an), *map(str, head_runs.values()), "--out", str(target))
    assert result.exit_code == 0, result.output
    page = target.read_text()
    assert_self_contained(page)
    assert "data-absent" not in page
    names = [n for n, _ in figures(page)]
    expected = {"mfr"} | {stem for run in (an, *head_runs.values()) for stem in read_run(run).plots}
    assert sorted(names) == sorted(expected)
    section = {sid: page.split(f'<section id="{sid}"')[1].split("</section>")[0] for sid in SECTIONS}
    assert "scores_ablation" in section["heads"] and "method_agreement" in section["heads"]
    heads = json.loads((head_runs["rank-heads"] / "results.json").read_text())["heads"]
    for l, h in heads:  # the top-k list marks the selected heads
        assert re.search(rf"<td[^>]*>{l}\.{h}</td><td[^>]*>yes</td>", section["heads"])
    assert "Spearman" in section["heads"]
    assert "dose_response" in section["blocking"] and "random" in section["blocking"] and "Dose–response table" in section["blocking"]
    assert "amplification" in section["amplification"] and "(best)" in section["amplification"]
    assert "Under blocking" in section["controls"] and "Under amplification" in section["controls"]
    for claim in ("(e) blocking the top heads", "(f) amplifying the top heads"):
        assert claim in section["findings"]
    # the blocking table has a value in every cell the sweep wrote one for (the top set's Δ log-odds was blank once)
    first_row = section["blocking"].split("<tbody>")[1].split("</tr>")[0]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", first_row)
    assert cells and all(c.strip() and c.strip() != "n/a" for c in cells[:9]), cells
    findings_rows = section["findings"].split("(e) blocking the top heads")[1].split("</tr>")[0]
    assert "top log odds change: n/a" not in findings_rows and "random log odds change: n/a" not in findings_rows


def renamed_copy(run, folder, model, n_layers=None):
    """A copy of a run directory that says it is of another model (and depth): a second model to compare."""
    shutil.copytree(run, folder, ignore=shutil.ignore_patterns("report.*"))
    results = json.loads((folder / "results.json").read_text())
    results["model"] = model
    if n_layers and "knockout" in results:
        results["n_layers"] = n_layers
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_compare_puts_models_side_by_side(study, head_runs, tmp_path):
    ev, an = study
    other = [renamed_copy(ev, tmp_path / "ev2", "second_model"), renamed_copy(an, tmp_path / "an2", "second_model", n_layers=6)]
    target = tmp_path / "compare.html"
    result = invoke("report", "--compare", str(ev), str(an), *map(str, head_runs.values()), *map(str, other), "--out", str(target))
    assert result.exit_code == 0, result.output
    page = target.read_text()
    assert_self_contained(page)
    model = read_run(an).model
    assert re.findall(r'<section id="([a-z-]+)"', page) == ["models", "behaviour", "findings", "knockout", "blocking", "amplification"]
    findings_table = page.split('id="findings"')[1].split("</section>")[0]
    assert f">{model}<" in findings_table and ">second_model<" in findings_table
    n_claims = len(json.loads((an / "findings.json").read_text()))
    assert len(re.findall(r'class="badge', findings_table)) == 2 * n_claims + 2  # + (e), (f) of the first model only
    assert findings_table.count("not run") == 2
    names = [n for n, _ in figures(page)]
    assert names == ["compare_mfr", "compare_knockout_text_following", "compare_knockout_vision_following", "compare_dose",
                     "compare_amplification"]
    assert "layer / number of layers" in page
    assert "No ablate run for second_model" in page and "No amplify run for second_model" in page

    # without --compare, runs of two models are an error that names the way out
    result = invoke("report", str(an), str(other[1]))
    assert result.exit_code == 2 and "--compare" in result.output


@pytest.mark.parametrize("make, expected", [
    (lambda p: p / "missing", "not a directory"),
    (lambda p: p, "no run directory"),
])
def test_bad_report_input_is_one_clear_line(tmp_path, make, expected):
    result = invoke("report", str(make(tmp_path)))
    assert result.exit_code == 2 and expected in result.output
    assert not list(tmp_path.glob("**/*.html"))


@pytest.fixture
def chromium():
    """The browser, or a skip that says why; CI sets MLLM_ARB_REQUIRE_BROWSER=1 so a missing browser fails there."""
    path = find_chromium()
    if path is None:
        reason = ("Chromium is not installed, so the report's browser check cannot run (Debian: `apt-get install -y "
                  "chromium`, which `make test` does where apt-get and root or sudo are available; or set MLLM_ARB_CHROMIUM)")
        if os.environ.get("MLLM_ARB_REQUIRE_BROWSER"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def test_report_renders_in_headless_chromium(chromium, study, head_runs, tmp_path):
    ev, an = study
    target = tmp_path / "report.html"
    assert invoke("report", str(ev), str(an), *map(str, head_runs.values()), "--out", str(target)).exit_code == 0
    check = check_page(target, width=1280, height=2000, phone_width=390, binary=chromium)

    assert check.console_errors == [], check.console_errors
    assert check.requests == [], "the page asked for something outside itself"
    assert check.desktop["sections"] == SECTIONS
    expected = {"mfr"} | {stem for run in (an, *head_runs.values()) for stem in read_run(run).plots}
    shown = {f["name"]: f for f in check.desktop["figures"]}
    assert set(shown) == expected
    for name, f in shown.items():
        assert f["loaded"] and f["visible"], f"figure {name} did not render: {f}"
        assert f["width"] > 200 and f["height"] > 100, f"figure {name} is too small to see: {f}"
        assert f["caption"].startswith("Figure ")
    # a phone's width: nothing spills sideways, figures still shown
    assert check.phone["scrollWidth"] <= check.phone["clientWidth"] + 1
    assert all(f["visible"] and 0 < f["width"] <= 390 for f in check.phone["figures"])
    # light and dark schemes
    assert check.light_background != check.dark_background
    # tables sort, both ways
    s = check.sort
    assert s is not None and s["up"] == sorted(s["before"]) and s["down"] == sorted(s["before"], reverse=True)
    assert (s["upState"], s["downState"]) == ("ascending", "descending")
    # the screenshot shows a page, not a blank
    shot = tmp_path / "shot.png"
    shot.write_bytes(check.screenshot)
    img = Image.open(shot).convert("L")
    assert img.size == (1280, 2000)
    assert ImageStat.Stat(img).stddev[0] > 10, "blank screenshot"
    assert len(img.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50


def test_report_screenshot_option(chromium, study, tmp_path):
    ev, an = study
    result = invoke("report", str(ev), str(an), "--out", str(tmp_path / "page.html"), "--screenshot")
    assert result.exit_code == 0, result.output
    assert re.search(r"\b0\s+console\s+errors", result.output)
    width, height = Image.open(tmp_path / "page.png").size  # the whole page, not its first screen
    assert width == 1280 and height > 2000


def test_runs_made_outside_a_git_checkout_say_so(study, tmp_path):
    """A run's manifest without a git sha (the code ran from an unpacked copy) shows a dash that says why."""
    ev, _ = study
    copy = tmp_path / "runs" / ev.name
    shutil.copytree(ev, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["git_sha"] = None
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("report", str(copy), "--out", str(tmp_path / "page.html"))
    assert result.exit_code == 0, result.output
    assert 'title="not recorded: the code was not run from a git checkout"' in (tmp_path / "page.html").read_text()


def test_a_real_run_reads_well_in_the_browser(chromium, tmp_path):
    """The report of a real `mllm-arb run` (the organism where it is shipped), opened in Chromium: no cell
    the run has data for is blank or "n/a" (a cell without a value by design says why), every figure's
    smallest text is at least 10 px as rendered, and a table wider than a phone's screen scrolls with a
    visible cue."""
    if (CHECKPOINT_DIR / "config.json").exists():
        model = ["model=organism", "data.n_items=16", "analysis.max_items=8", "batch_size=16"]
    else:
        model = ["model=llava_tiny", "data=jsonl", f"data.path={write_items(tmp_path / 'data', conflict_items(8))}", "batch_size=8", EDGES]
    out = tmp_path / "out"
    result = invoke("run", *model, f"output_dir={out}", "sweep.n_random=2", "sweep.n_random_dose=2", "sweep.ks=[0.05]",
                    "sweep.alphas=[2,5]", "scoring.n_boot=100")
    assert result.exit_code == 0, result.output
    page = only_run(out, "run") / "report.html"
    check = check_page(page, width=1280, height=2000, phone_width=390, full_page=True, binary=chromium)
    assert check.console_errors == []
    assert check.desktop["blank_cells"] == [], "\n".join(check.desktop["blank_cells"])
    small = {f["name"]: round(f["font_px"], 1) for f in check.desktop["figures"] if f["font_px"] is None or f["font_px"] < 10}
    assert not small, f"figure text under 10 px as rendered: {small}"
    assert check.phone["scrollWidth"] <= check.phone["clientWidth"] + 1
    wide = [t for t in check.phone["tables"] if t["overflows"]]
    assert wide and all(t["scrolls"] and t["cue"] for t in wide)
    assert all(not t["cue"] for t in check.desktop["tables"] if not t["overflows"])
    assert Image.open(io.BytesIO(check.screenshot)).size == (1280, check.desktop["scrollHeight"])


def test_figures_are_tidied_before_they_are_written():
    """`plots.tidy`: no text under the minimum size, and tick labels that would overlap (a symlog colour
    bar's crowd of ticks near zero) thinned until none do."""
    import numpy as np
    from matplotlib.colors import SymLogNorm

    from mllm_arb.report.plots import MIN_FONT_PT, overlapping_ticks, plt, tidy

    fig, ax = plt.subplots(figsize=(3, 2))
    im = ax.imshow(np.linspace(-50, 50, 64).reshape(8, 8), norm=SymLogNorm(linthresh=0.05, vmin=-50, vmax=50), cmap="RdBu_r")
    bar = fig.colorbar(im, ax=ax)
    bar.set_ticks(np.concatenate([-np.logspace(-2, 1.7, 12), np.logspace(-2, 1.7, 12)]))
    ax.set_title("tiny", fontsize=5)
    assert overlapping_ticks(fig)
    assert tidy(fig) == MIN_FONT_PT
    assert overlapping_ticks(fig) == []
    plt.close(fig)


@pytest.mark.slow
def test_run_ends_with_its_report(tmp_path):
    """`mllm-arb run` writes report.html into its parent run directory, every stage present (about 1.5 min on CPU)."""
    items = write_items(tmp_path / "data", conflict_items(8))
    out = tmp_path / "out"
    result = invoke("run", "model=llava_tiny", "data=jsonl", f"data.path={items}", f"output_dir={out}", "batch_size=8",
                    EDGES, "sweep.methods=[ablation,dla]", "sweep.n_random=2", "sweep.n_random_dose=2", "sweep.ks=[0.25]",
                    "sweep.alphas=[2]", "scoring.n_boot=100")
    assert result.exit_code == 0, result.output
    parent = only_run(out, "run")
    page = (parent / "report.html").read_text()
    assert re.findall(r'<section id="([a-z-]+)"', page) == SECTIONS and "data-absent" not in page


def test_two_checkpoints_with_one_model_name_are_never_merged(tmp_path):
    """`model.path` can point `model=llava_tiny` at any checkpoint: runs are grouped by the weights they used."""
    from mllm_arb.models.tiny import save_tiny_model
    from mllm_arb.report.study import load_studies

    out = tmp_path / "out"
    for seed in (0, 1):
        folder = save_tiny_model("llava", tmp_path / f"ckpt{seed}", seed=seed)
        result = invoke("evaluate", "model=llava_tiny", f"model.path={folder}", "data.n_items=2",
                        "conditions=[text_following]", f"output_dir={out}")
        assert result.exit_code == 0, result.output
    runs = sorted((out / "evaluate" / "llava_tiny").iterdir())
    studies = load_studies(runs)
    assert len(studies) == 2 and len({s.model for s in studies}) == 2
    assert all(s.model.startswith("llava_tiny [") for s in studies)
    single = invoke("report", *map(str, runs), "--out", str(tmp_path / "one.html"))
    assert single.exit_code == 2 and "several models" in single.output
    both = invoke("report", "--compare", *map(str, runs), "--out", str(tmp_path / "both.html"))
    assert both.exit_code == 0, both.output
    page = (tmp_path / "both.html").read_text()
    assert all(s.model in page for s in studies)
