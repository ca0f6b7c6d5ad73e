"""The noise table and the verdicts computed from it (cpcl_kit/experiments/noise.py, benchmarks/noise.py)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cpcl_kit.errors import KitError
from cpcl_kit.experiments import noise

ROOT = Path(__file__).resolve().parents[1]

# mIoU (0..1) per (method, seed, threads), chosen so that every figure below can be checked by hand.
MIOU = {("supervised", 0): (0.70, 0.71), ("supervised", 1): (0.68, 0.66), ("supervised", 2): (0.72, 0.72),
        ("cps", 0): (0.75, 0.76), ("cps", 1): (0.74, 0.73), ("cps", 2): (0.77, 0.78),
        ("cpcl", 0): (0.76, 0.73), ("cpcl", 1): (0.73, 0.74), ("cpcl", 2): (0.79, 0.77)}


def make_table(miou=MIOU) -> noise.NoiseTable:
    rows = [{"method": m, "seed": s, "threads": t, "miou": v[t - 1]} for (m, s), v in miou.items() for t in (1, 2)]
    return noise.NoiseTable(pd.DataFrame(rows), {"preset": "benchmark", "commit": "abc1234", "cpu": "some CPU",
                                                 "command": "python benchmarks/noise.py"})


def test_differences_moves_and_floors_by_hand():
    t = make_table()
    d = t.differences("cpcl", "supervised")
    # seed 0: 76-70=6, 73-71=2; seed 1: 73-68=5, 74-66=8; seed 2: 79-72=7, 77-72=5
    assert np.allclose(d.to_numpy(), [[6, 2], [5, 8], [7, 5]])
    assert np.allclose(t.float_moves("cpcl", "supervised"), [4, 3, 2])
    assert t.floor("cpcl", "supervised") == pytest.approx(4)
    assert t.floor("supervised") == pytest.approx(2)  # seed 1: 68 vs 66
    assert sorted(t.draws("cpcl", "supervised")) == pytest.approx([2, 5, 5, 6, 7, 8])
    # a pair the table does not hold: the largest floor of its pairs (cpcl-cps: 4, 2, 3 -> 4; cps-sup: 0,0,1)
    assert t.floor("union_only", "cpcl") == pytest.approx(4)
    pairs = t.pair_table()
    assert pairs.loc["CPCL − supervised", "min"] == 2 and pairs.loc["CPCL − supervised", "max"] == 8
    summary = t.summary()
    assert summary.loc["supervised", "runs"] == 6 and summary.loc["supervised", "mean (%)"] == pytest.approx(69.83, abs=0.01)
    assert "abc1234" in t.provenance() and "some CPU" in t.provenance() and "2 float orders: 1 thread; 2 threads" in t.provenance()


def test_one_run_verdicts():
    t = make_table()
    v = noise.compare_runs("cpcl", 0.76, "supervised", 0.70, t)
    assert (v.label, v.floor) == (noise.AHEAD, pytest.approx(4)) and v.difference == pytest.approx(6)
    assert v.text.startswith("CPCL 76.0 % against supervised 70.0 %: on this seed CPCL is ahead by 6.0 points, "
                             "beyond the noise (the float order alone moves this difference by up to 4.0 points")
    assert "Over 6 runs of this preset (3 seeds, 2 float orders) the difference ranged from +2.0 to +8.0 points, " \
           "CPCL ahead in 6 of them" in v.text
    stand_in = noise.compare_runs("supervised", 0.70, "random init", 0.40, t)
    assert stand_in.label == noise.AHEAD and "this pair was not measured" in stand_in.text and "Over" not in stand_in.text
    v = noise.compare_runs("cpcl", 0.72, "supervised", 0.70, t)
    assert v.label == noise.WITHIN and "cannot decide" in v.text
    assert noise.compare_runs("supervised", 0.60, "cpcl", 0.70, t).label == noise.BEHIND
    v = noise.compare_runs("cpcl", 0.72, "supervised", 0.70, None)
    assert v.label is None and "not judged" in v.text and "+2.0 points" in v.text and "several" not in v.text


def test_verdicts_over_seeds():
    t = make_table()
    assert noise.compare_seeds("cpcl", "supervised", [6, 5, 7], t).label == noise.AHEAD  # all > 0, 6 > 4
    assert noise.compare_seeds("cpcl", "supervised", [3, 3, 3.5], t).label == noise.WITHIN  # mean 3.2 < 4
    v = noise.compare_seeds("cpcl", "cps", [5, -1, 9], t)
    assert v.label == noise.WITHIN and "not every seed has the same sign" in v.text
    assert noise.compare_seeds("cpcl", "cps", [5, 0, 9], t).label == noise.WITHIN  # a seed without a difference
    assert noise.compare_seeds("cps", "cpcl", [-5, -6, -7], t, seeds=[3, 4, 5]).label == noise.BEHIND
    assert "(seed 3)" in noise.compare_seeds("cps", "cpcl", [-5, -6, -7], t, seeds=[3, 4, 5]).text


# Student's t quantiles for a two-sided 95 % interval, from a printed t table: 1, 2 and 3 degrees of freedom.
T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824}


def test_paired_interval_by_hand():
    # [6, 5, 7]: mean 6, sd 1, half-width 4.3027 * 1 / sqrt(3) = 2.4841
    low, high = noise.paired_interval([6, 5, 7])
    assert (low, high) == (pytest.approx(6 - 2.4841, abs=1e-3), pytest.approx(6 + 2.4841, abs=1e-3))
    # [1, 3]: mean 2, sd sqrt(2), half-width 12.7062 * sqrt(2) / sqrt(2)
    assert noise.paired_interval([1, 3]) == (pytest.approx(2 - T975[1], abs=1e-3), pytest.approx(2 + T975[1], abs=1e-3))
    assert noise.paired_interval([4, 4, 4]) == (4, 4)  # no spread, no width
    assert noise.paired_interval([2.5]) is None  # one seed: no interval
    assert noise.open_interval((-1.5, 1.0)) and not noise.open_interval((-0.9, 0.9)) and not noise.open_interval((0.2, 5))
    # the spread of [2.1, 0.6, 0.1] (sd 1.0408): 6 seeds give 2.5706 * 1.0408 / sqrt(6) = 1.09, 7 give 0.96
    assert noise.seeds_for([2.1, 0.6, 0.1]) == 7
    assert noise.seeds_for([1.0]) is None and noise.seeds_for([1, 1]) == 2


def test_verdicts_state_the_paired_interval():
    t = make_table()  # every floor 4 points (cpcl-supervised), 2 (supervised)
    v = noise.compare_seeds("cpcl", "supervised", [6, 5, 7], t)
    assert v.interval == (pytest.approx(3.5159, abs=1e-3), pytest.approx(8.4841, abs=1e-3))
    assert "+6.0 points on the mean of 3 seeds (+6.0 (seed 0), +5.0 (seed 1), +7.0 (seed 2)), paired 95 % interval " \
           "+3.5 to +8.5 points (Student's t, 2 degrees of freedom): CPCL is ahead on every seed" in v.text
    # within the noise: the words say so with the interval ([3, 3, 3.5]: mean 3.17, sd 0.2887, half 0.7172)
    v = noise.compare_seeds("cpcl", "supervised", [3, 3, 3.5], t)
    assert v.label == noise.WITHIN and "interval +2.4 to +3.9 points" in v.text and "cannot tell at 3 seeds" in v.text
    # every seed ahead and the mean beyond the floor, but the interval holds 0 and is wider than a point:
    # [0.1, 0.2, 12]: mean 4.1 > 4, sd 6.8418, half 4.3027 * 6.8418 / sqrt(3) = 17.00
    v = noise.compare_seeds("cpcl", "supervised", [0.1, 0.2, 12], t)
    assert v.interval[0] == pytest.approx(4.1 - 16.996, abs=0.01) and v.label == noise.WITHIN
    assert "cannot tell at 3 seeds" in v.text and "the interval holds 0" in v.text
    # a narrow interval round 0 is said too: [0.2, -0.1, 0.3, 0.1], mean 0.125, sd 0.1708, half 0.2718
    v = noise.compare_seeds("cpcl", "cps", [0.2, -0.1, 0.3, 0.1], t)
    assert "cannot tell at 4 seeds" in v.text and "rules out a difference of more than 1 point" in v.text
    assert "3 degrees of freedom" in v.text
    one = noise.compare_seeds("cpcl", "cps", [0.5], t)
    assert one.interval is None and "one seed gives no interval" in one.text and "cannot tell at 1 seed " in one.text
    # without a noise table: the interval still, and "cannot tell" where it leaves the sign open
    v = noise.compare_seeds("cpcl", "cps", [1, 3], None)
    assert v.label is None and v.interval[0] == pytest.approx(2 - T975[1], abs=1e-3)
    assert "cannot tell at 2 seeds; no noise table holds" in v.text and "1 degree of freedom" in v.text
    assert "cannot tell" not in noise.compare_seeds("cpcl", "cps", [6, 5, 7], None).text
    # a rounded tiny negative is never printed as -0.0
    assert "+0.0 (seed 1)" in noise.compare_seeds("cpcl", "cps", [1, -0.04], t).text
    assert noise.compare_runs("cpcl", 0.76, "supervised", 0.70, t).interval is None


def test_a_table_holds_for_the_recipe_it_measured(tmp_path):
    from cpcl_kit.config import make_config

    path = noise.table_path("benchmark", tmp_path)
    t = make_table()

    def write(**meta):
        path.write_text(json.dumps({**t.meta, **meta, "runs": t.runs.to_dict("records")}))

    write(config=make_config("benchmark").to_dict(), sets=[])
    assert noise.for_preset("benchmark", tmp_path).floor("cpcl", "supervised") == pytest.approx(4)
    # demo trains the benchmark recipe: every setting but the bookkeeping ones is equal
    assert noise.for_preset("demo", tmp_path) is not None
    assert noise.for_preset("smoke", tmp_path) is None and noise.for_preset("nope", tmp_path) is None
    # a table of other settings, or of a preset that has changed since, holds for nothing
    write(config=make_config("benchmark", iterations=2).to_dict(), sets=["iterations=2"])
    assert noise.for_preset("benchmark", tmp_path) is None
    write(config=make_config("benchmark", lr=0.1).to_dict(), sets=[])
    assert noise.for_preset("benchmark", tmp_path) is None
    write()  # no recipe recorded
    assert noise.for_preset("benchmark", tmp_path) is None


def test_a_seed_in_one_float_order_says_nothing_of_the_float_order():
    one = {k: (v[0], float("nan")) for k, v in MIOU.items()}
    rows = [{"method": m, "seed": s, "threads": t, "miou": v[t - 1]} for (m, s), v in one.items() for t in (1, 2)
            if t == 1]
    t = noise.NoiseTable(pd.DataFrame(rows), {"preset": "benchmark"})
    assert not t.measures("cpcl", "supervised")
    with pytest.raises(KitError, match="no pair of methods measured in two float orders"):
        t.floor("cpcl", "supervised")
    only_sup = noise.NoiseTable(make_table().runs.query("method == 'supervised'"), {"preset": "benchmark"})
    with pytest.raises(KitError, match="no pair"):
        only_sup.floor("cpcl", "supervised")
    with pytest.raises(KitError, match="one difference per seed"):
        noise.compare_seeds("cpcl", "supervised", [], make_table())
    with pytest.raises(KitError, match="one difference per seed"):
        noise.compare_seeds("cpcl", "supervised", [1, 2], make_table(), seeds=[0])


def test_noise_benchmark_writes_every_run_with_its_provenance(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_noise", ROOT / "benchmarks" / "noise.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    small = ["--set", "iterations=2", "--set", "n_train_scenes=16", "--set", "n_val_scenes=4",
             "--set", "sup_only_iters=1", "--set", "rampup_iters=0", "--set", "log_every=1"]
    args = ["--preset", "smoke", "--seeds", "1", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path),
            "--jobs", "1", "--quiet", *small]
    table = mod.main(args)
    data = json.loads((tmp_path / "noise-smoke.json").read_text())
    assert len(data["runs"]) == data["runs_expected"] == 2 * 3
    assert {(r["method"], r["seed"], r["threads"]) for r in data["runs"]} == \
        {(m, 1, t) for m in noise.METHODS for t in (1, 2)}
    assert data["command"].startswith("python benchmarks/noise.py --preset smoke") and data["cpu"] and data["commit"]
    assert "--runs <runs> --results <results>" in data["command"]  # this machine's folders, named by their option
    assert data["sets"] == small[1::2] and data["wall_seconds"] > 0
    assert (tmp_path / "noise-smoke.md").read_text().startswith("# Noise floor (smoke preset)")
    assert table.floor("cpcl", "supervised") >= 0
    # a second call trains nothing and keeps the wall time
    assert mod.main(args).runs.equals(table.runs)
    assert json.loads((tmp_path / "noise-smoke.json").read_text())["wall_seconds"] == data["wall_seconds"]
    # another machine's table joins as float orders of its own
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**data, "cpu": "Other CPU (avx2; 16 cores)",
                                 "runs": [{**r, "miou": r["miou"] + 0.01} for r in data["runs"] if r["threads"] == 1]}))
    merged = mod.main(args + ["--merge", str(other)])
    assert len(merged.runs) == 6 + 3 and set(merged.runs["order"]) == {"1 thread", "2 threads", "Other CPU, 1 thread"}
    assert merged.miou("cpcl").shape == (1, 3)
    assert json.loads((tmp_path / "noise-smoke.json").read_text())["merged"] == ["<merge>"]
    with pytest.raises(KitError, match="--merge .*a table of the smoke preset, not benchmark"):
        mod.main(["--preset", "benchmark", "--collect-only", "--runs", str(tmp_path / "runs"), "--results",
                  str(tmp_path), "--merge", str(other)])


def test_eval_noise_evaluates_each_run_on_other_validation_draws(tmp_path):
    from cpcl_kit.experiments import ablate

    runs = tmp_path / "runs"
    small = {"iterations": 2, "n_train_scenes": 16, "n_val_scenes": 4, "sup_only_iters": 1, "rampup_iters": 0}
    ablate.run_grid({"variants": ["supervised", "cpcl"], "fractions": ["1/16"], "seeds": [0]}, runs,
                    preset="smoke", overrides=small, progress=False, log=None)
    spec = importlib.util.spec_from_file_location("bench_eval_noise", ROOT / "benchmarks" / "eval_noise.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--runs", str(runs), "--sizes", "3,5", "--draws", "2", "--results", str(tmp_path)])
    data = json.loads((tmp_path / "eval_noise-smoke.json").read_text())
    assert len(data["runs"]) == 2 * 2 * 2  # methods x sizes x draws
    assert {(r["scenes"], r["draw"]) for r in data["runs"]} == {(n, d) for n in (3, 5) for d in (0, 1)}
    # the draws are other scenes: the same net scores differently on them (or the sd is 0 by chance only
    # if every draw gives the same mIoU, which two different 5-scene sets of a barely trained net do not)
    sd = {r["scenes"]: r["sd of CPCL − supervised"] for r in data["summary"]}
    assert set(sd) == {3, 5} and all(v >= 0 for v in sd.values())
    assert data["commit"] and data["cpu"] and data["command"].startswith("python benchmarks/eval_noise.py")
