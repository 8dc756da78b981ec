"""`benchmarks.bench_run`'s comparison of two runs' results: every number, truth value and string, with
the run folders' names taken out of strings (they differ between any two runs)."""

import math

from benchmarks.bench_run import largest_difference, numbers


def test_strings_naming_run_folders_compare_equal_and_other_differences_are_found():
    a = {"r.json": numbers({"heads_source": "/tmp/x/before-0/run/organism/2026-12-03_07-03-05-246528d3/rank-heads",
                             "verdict": "holds", "mfr": [0.5, 2.0], "ok": True}, base="/tmp/x/before-0")}
    b = {"r.json": numbers({"heads_source": "/tmp/x/now-0/run/organism/2026-12-03_08-11-15-0badcafe/rank-heads",
                             "verdict": "holds", "mfr": [0.5, 2.0 + 2**-18], "ok": True}, base="/tmp/x/now-0")}
    assert largest_difference(a, b)[0] == 2**-18 and "mfr[1]" in largest_difference(a, b)[1]
    assert largest_difference(a, b, relative=True)[0] == 2**-19
    for key, changed in (("/verdict", "does not hold"), ("/ok", False)):
        c = {"r.json": {**b["r.json"], key: changed}}
        assert largest_difference(a, c) == (math.inf, largest_difference(a, c)[1]) and key in largest_difference(a, c)[1]
    assert largest_difference(a, {"r.json": {k: v for k, v in b["r.json"].items() if k != "/ok"}})[0] == math.inf
