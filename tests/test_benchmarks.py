"""The benchmark scripts: the speed benchmark's functions at minimal sizes (a smoke test: no timing is
asserted), and the commands and paths the committed results record, which must work in any clone."""

import importlib.util
import json
import math
import re
import shlex
from pathlib import Path

import pytest
import torch

from cpcl_kit import provenance

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TINY = ["--device", "cpu", "--backbone", "resnet18", "--crop", "32", "--batch", "2", "--head-channels", "8",
        "--output-stride", "16", "--classes", "11", "--steps", "1", "--warmup", "0", "--pairs", "1",
        "--pl-batch", "2", "--pl-classes", "5", "--pl-size", "16", "--pl-repeats", "1", "--limit-rounds", "1",
        "--eval-rounds", "1", "--eval-scenes", "8", "--demo-iterations", "1", "--demo-pair-seconds", "0.05",
        "--demo-rounds", "1", "--demo-scenes", "32"]


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("bench_speed", ROOT / "benchmarks" / "speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    torch.set_num_threads(THREADS)  # parse_args sets the thread count: give the rest of the session its own


THREADS = torch.get_num_threads()


def test_cpu_defaults_are_the_small_ones(speed):
    args = speed.parse_args(["--device", "cpu"])
    assert (args.backbone, args.crop, args.batch, args.head_channels) == ("resnet18", 64, 4, 64)
    assert args.isolate and args.amp and args.threads == 1


def test_host_recipe_gives_the_kits_pseudo_labels(speed):
    g = torch.Generator().manual_seed(0)
    t1, t2 = torch.randn(2, 5, 6, 7, generator=g), torch.randn(2, 5, 6, 7, generator=g)
    kit = speed.pseudo_supervision(t1, t2)
    for confusion in (speed._confusion_sklearn, speed._confusion_bincount):
        assert speed._same_outputs(kit, speed.reference_pseudo_labels(t1, t2, confusion))


def test_whole_benchmark_writes_json_and_table(speed, tmp_path, capsys):
    out = tmp_path / "speed.json"
    assert speed.main([*TINY, "--no-isolate", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and res["torch"] == torch.__version__ and "commit" in res
    assert res["args"]["crop"] == 32 and res["threads"] == 1
    assert res["args"]["out"] == "<out>"  # tmp_path is this machine's folder, not the repository's
    assert [t["method"] for t in res["training"]] == ["supervised", "cps", "cpcl"]
    assert [t["images_per_step"] for t in res["training"]] == [2, 6, 6]
    for t in res["training"]:
        assert t["images_per_s"] > 0 and math.isfinite(t["peak_mem_mib"])
    assert res["overhead"]["ratio"] > 0
    assert all(res["pseudo_labels"]["outputs_match"].values())
    assert "skipped" in res["amp"]
    limit = res["limit"]["cpcl"]  # the demo preset's step: FLOPs, the conv rate and the ratio of each way
    assert limit["gflop"] > 1 and limit["conv_gflops_one_thread"] > 0
    assert set(limit) >= {"plain step, one thread", "one thread", "net threads"}
    assert "net threads" not in res["limit"]["supervised"]
    assert all(w["ratio_to_limit"] > 0 for w in (limit["one thread"], limit["net threads"]))
    assert limit["plain step, one thread"]["speedup_vs_plain_step"] == 1.0
    ev = res["eval"]  # the demo's end-of-run evaluation at 4 images a batch and at the default
    assert ev["scenes"] == 8 and ev["batch 4"]["speedup_vs_batch_4"] == 1.0 and "batch 64 (default)" in ev
    assert set(ev["confusion_equal"]) == {"1", "2", "ensemble"}
    demo = res["demo"]  # what make demo trains, in one-thread seconds, and the least time for it
    from cpcl_kit.teach.runner import DEMO_TRAINS

    assert [[r["notebook"], r["method"], r["settings"]] for r in demo["runs"]] == [list(t) for t in DEMO_TRAINS]
    cpcl_run = next(r for r in demo["runs"] if r["method"] == "cpcl")
    assert [p["first_iteration"] for p in cpcl_run["phases"]] == [0, 600]  # supervised-only start, then CPCL
    assert all(p["net_threads_speedup"] > 0 and p["net_threads_speedup_vs_plain"] > 0 for p in cpcl_run["phases"])
    assert sum(p["iterations"] for p in cpcl_run["phases"]) == 2400
    assert demo["work_one_thread_s"] == pytest.approx(sum(
        p["iterations"] * p["s_per_iteration"] for r in demo["runs"] for p in r["phases"]), rel=0.01)
    assert 0 < demo["capacity"]["cores"] <= 2 and 0 <= demo["capacity"]["overlap"] <= 1
    assert demo["training_floor_s"] == pytest.approx(demo["work_one_thread_s"] / demo["capacity"]["cores"], rel=0.01)
    assert set(res["goals"]) == {"cpcl_overhead_ratio", "pseudo_label_speedup_cpu", "demo_training_floor_s"}
    for g in res["goals"].values():
        assert isinstance(g["met"], bool) and g["value"] > 0
    table = capsys.readouterr().out
    assert "| train cpcl (fp32) |" in table and "CPCL overhead" in table and "| goal |" in table
    assert "| demo cpcl step, net threads |" in table
    assert "| make demo's training, least time on these cores |" in table


def test_isolated_measurement_forwards_the_settings_to_a_child(speed, monkeypatch, capsys):
    """The child command line, run in-process here (a fresh interpreter would cost seconds)."""
    def fake_run(cmd, **kw):
        assert cmd[1].endswith("speed.py")
        assert speed.main(cmd[2:]) == 0
        return type("Done", (), {"returncode": 0, "stdout": capsys.readouterr().out, "stderr": ""})

    monkeypatch.setattr(speed.subprocess, "run", fake_run)
    res = speed.measure_training_isolated("cps", speed.parse_args([*TINY, "--isolate"]))
    assert res["method"] == "cps" and res["images_per_step"] == 6 and res["images_per_s"] > 0
    assert res["mem_kind"].endswith("fresh process") and res["peak_mem_mib"] >= 0


# ------------------------------------------------------------------------------------------------
# recorded commands: what a user types in a clone


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# A token that starts with "/": a folder of the machine that ran (a URL's slashes follow "http:",
# a relative path's follow a name, so neither matches).
ABSOLUTE = re.compile(r"(?:^|[\s=('\"`\[,])(/[\w.~-][^\s'\"`)\],]*)")
# Options whose file joins the result: the file must be committed, or nobody can reproduce it.
MERGE_OPTIONS = ("--merge",)
# Keys under which the scripts record a command or a path they were given.
RECORDED = {"command", "commands", "merged", "out"}


def recorded(data, keys=RECORDED) -> list[str]:
    """Every string under one of ``keys``, at any depth of a results JSON (a list's strings too)."""
    if isinstance(data, list):
        return [s for item in data for s in recorded(item, keys)]
    if not isinstance(data, dict):
        return []
    found = []
    for key, value in data.items():
        if key in keys and isinstance(value, (str, list)):
            found += [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)]
        else:
            found += recorded(value, keys)
    return found


def results_json() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}


def test_the_checks_see_the_committed_results():
    """Without this, a moved results folder would leave every check below with nothing to check."""
    commands = [c for data in results_json().values() for c in recorded(data, {"command", "commands"})]
    assert len(commands) >= 10 and any("--merge" in c for c in commands)
    assert len(list(RESULTS.glob("*.md"))) >= 8


@pytest.mark.parametrize("name", sorted(p.name for p in RESULTS.glob("*.json")))
def test_recorded_commands_and_paths_name_no_machines_folder(name):
    for text in recorded(json.loads((RESULTS / name).read_text())):
        assert not ABSOLUTE.search(text), f"{name}: {text!r} names a folder of the machine that ran"


@pytest.mark.parametrize("name", sorted(p.name for p in RESULTS.glob("*.md")))
def test_results_markdown_names_no_machines_folder(name):
    for line in (RESULTS / name).read_text().splitlines():
        assert not ABSOLUTE.search(line), f"{name}: {line!r} names a folder of the machine that ran"


def test_recorded_commands_read_only_committed_files():
    for name, data in results_json().items():
        for command in recorded(data, {"command", "commands"}):
            words = shlex.split(command)
            if words[0].startswith("python"):
                assert (ROOT / words[1]).is_file(), f"{name}: {command!r} runs no script of the repository"
            for i, word in enumerate(words):
                option, eq, value = word.partition("=")
                if option not in MERGE_OPTIONS:
                    continue
                value = value if eq else words[i + 1]
                assert not Path(value).is_absolute() and not value.startswith("<"), f"{name}: {command!r}"
                assert (ROOT / value).is_file(), f"{name}: {command!r} merges {value}, which is not committed"
        for merged in data.get("merged", []):
            assert (ROOT / merged).is_file(), f"{name}: merged {merged}, which is not committed"


def test_the_merged_tables_give_the_committed_rows_of_other_machines():
    """The committed table is what its recorded command makes of the committed files: every row of
    another machine (its float order names that CPU) is one the merged file gives, and no other."""
    noise = load_script("noise")
    for path in sorted(RESULTS.glob("noise-*.json")):
        data = json.loads(path.read_text())
        ours = [r for r in data["runs"] if ", " not in r["order"]]
        backbones = {r["backbone"] for r in ours}
        merged = [r for m in data.get("merged", []) for r in noise.merged_rows(ROOT / m, data["preset"], backbones)]
        assert merged == [r for r in data["runs"] if ", " in r["order"]], path.name


def test_what_notebooks_06_and_07_print_names_no_machines_folder():
    from cpcl_kit.experiments import ablate, noise, prepared

    lines = [prepared.provenance(prepared.committed()), noise.for_preset("benchmark").provenance()]
    lines += [ablate.provenance(ablate.committed_grid(name=p.stem)[1]) for p in RESULTS.glob("ablation-*.json")]
    assert len(lines) >= 5
    for line in lines:
        assert "`python benchmarks/" in line and not ABSOLUTE.search(line), line


def test_command_line_names_paths_as_a_clone_does(tmp_path):
    root, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    (root / "benchmarks" / "results").mkdir(parents=True)
    (elsewhere / "runs" / "a").mkdir(parents=True)
    script = root / "benchmarks" / "noise.py"
    argv = ["--runs", str(tmp_path / "runs"), "--merge", str(root / "benchmarks" / "results" / "x.json"),
            f"--results={root / 'benchmarks' / 'results'}", "--keep-out", "runs/a", "--labeled", "1/16",
            "--set", "iterations=2", "--variants", "cpcl,cps", "--name", "two words", "--out", "~/out", str(root)]
    assert provenance.command_line(script, argv, root=root, cwd=elsewhere) == (
        "python benchmarks/noise.py --runs <runs> --merge benchmarks/results/x.json "
        "--results=benchmarks/results --keep-out <keep-out> --labeled 1/16 --set iterations=2 "
        "--variants cpcl,cps --name 'two words' --out <out> .")
    # relative to where it ran: inside the repository, relative to its root
    inside = root / "benchmarks"
    assert provenance.command_line("noise.py", ["--results", "./results", "--merge", "../x.json"], python="python3",
                                   root=root, cwd=inside) == \
        "python3 benchmarks/noise.py --results benchmarks/results --merge x.json"
    assert provenance.command_line(script, ["--runs", str(tmp_path / "runs")], root=root).endswith("--runs <runs>")


def test_recorded_path_is_relative_inside_the_repository_and_a_placeholder_outside(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    assert provenance.recorded_path(root, "runs", root=root) == "."
    assert provenance.recorded_path(root / "a" / "b.json", "out", root=root) == "a/b.json"
    assert provenance.recorded_path(tmp_path / "elsewhere", "--keep-out", root=root) == "<keep-out>"
    assert provenance.recorded_path(Path("../repo/c"), "out", root=root, cwd=tmp_path / "a" / "b") == "<out>"
    assert provenance.recorded_path(Path("../c"), "out", root=root, cwd=root / "d") == "c"


def test_timing_records_the_clones_output_as_any_clone_reads_it(tmp_path):
    timing = load_script("timing")
    clone = tmp_path / "cpcl-kit-clone-x" / "cpcl-kit"
    home = Path.home()
    assert timing.as_in_any_clone(f"  done in 13 s -> {clone}/out/notebooks/08.ipynb", clone) == \
        "  done in 13 s -> out/notebooks/08.ipynb"
    assert timing.as_in_any_clone(f"cd {clone}; no set in {home}/.cache/cpcl-kit", clone) == \
        "cd .; no set in ~/.cache/cpcl-kit"


def test_every_committed_result_names_the_commit_that_produced_it():
    """A results file says which committed code produced it: a top-level commit (or commits)."""
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        data = json.loads(path.read_text())
        named = data.get("commit") or data.get("commits")
        assert named, f"{path.name} names no commit"
