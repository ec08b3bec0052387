"""The GPU kit (scripts/gpu_check.sh, seqmix.bench.gpu_kit / gpu_check, scripts/gpu_import.py) works on CPU: the
stage plan covers every registry layer and CUDA backend, the wheelhouse list is consistent, and the dry run runs
every stage's CPU smoke variant end to end and its output imports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import seqmix
from seqmix.bench import gpu_check, gpu_kit
from seqmix.bench.cli import gpu_check_main
from seqmix.bench.core import SeriesBudget
from seqmix.bench.layers import LayerBenchConfig, _backend_plan

ROOT = Path(__file__).resolve().parents[1]
MAX_FILES, DEFAULT_BUDGET_S = 8, 7 * 60


def test_stage_plan_covers_every_registry_layer_and_cuda_backend():
    plan = set(gpu_kit.contract_plan())
    for name in seqmix.available():
        cls = gpu_kit.mixer_class(name)
        backends = gpu_kit.cuda_backends(cls)
        assert backends, f"{name}: no backend for a CUDA run"
        assert {(name, b) for b in backends} <= plan, f"contract harness misses a backend of {name}"
        if cls.frame_input:  # frame-grid layers are timed by `seqmix bench rollout`, not the token-length suite
            continue
        # the layer benchmark's "all" (the layers stage) times exactly these backends
        timed = [b for b, _ in _backend_plan(name, LayerBenchConfig.quick_config(backends=["all"]))[1]]
        assert timed == list(backends), f"{name}: layers stage times {timed}, the kit's CUDA backends are {backends}"
    assert {n for n, _ in plan} == set(seqmix.available())
    layers_stage = gpu_kit.stage_by_name(["layers"])[0]
    assert "--layers" not in layers_stage.gpu, "the layers stage must time every registry layer"
    assert layers_stage.gpu[layers_stage.gpu.index("--backends") + 1] == "[all]"
    tests_stage = gpu_kit.stage_by_name(["tests"])[0]
    assert "gpu" in tests_stage.gpu and "tests" in tests_stage.gpu  # every GPU-marked test, harness included


def test_stages_resolve_and_fit_the_window():
    import importlib.util

    names = [s.name for s in gpu_kit.STAGES]
    assert len(names) == len(set(names))
    # files under --out: kit.json, summary.md, log.txt and one document per stage
    assert len(gpu_kit.STAGES) + 3 <= MAX_FILES
    # stage budgets plus ~20 s of wheel install and start-up stay inside the default window
    assert sum(s.budget_s for s in gpu_kit.STAGES) + 20 <= DEFAULT_BUDGET_S
    for s in gpu_kit.STAGES:
        assert s.gpu[0] == "-m" and importlib.util.find_spec(s.gpu[1]) is not None, s
        if s.document:
            assert any("{out}" in a for a in s.argv("{out}", False)), f"{s.name} writes no document under {{out}}"
        assert "{out}" not in " ".join(s.argv("/x", True))
    with pytest.raises(ValueError, match="valid: tests"):
        gpu_kit.stage_by_name(["nope"])


def test_wheel_list_matches_the_wheel_script():
    """The kit's WHEELS are the distributions gpu_wheels.sh carries, at the GPU lock's versions."""
    text = (ROOT / "scripts" / "gpu_wheels.sh").read_text()
    names = re.search(r"^DOWNLOAD=\(([^)]*)\)", text, flags=re.M).group(1).split()
    lock = (ROOT / "requirements" / "gpu-py312.txt").read_text() + (ROOT / "requirements" / "mamba-ssm.txt").read_text()
    locked = dict(re.findall(r"^([a-z][a-z0-9-]*)==(\S+)", lock, flags=re.M))
    assert {n: locked[n] for n in [*names, "mamba-ssm"]} == gpu_kit.WHEELS
    files = [f"{d.replace('-', '_')}-{v}-py3-none-any.whl" for d, v in gpu_kit.WHEELS.items()]
    assert gpu_kit.wheelhouse_problems(files) == []
    assert gpu_kit.wheelhouse_problems(files[1:]) == [f"missing fla-core=={gpu_kit.WHEELS['fla-core']}"]
    assert "the kit pins" in gpu_kit.wheelhouse_problems(["fla_core-0.5.0-py3-none-any.whl"] + files[1:])[0]


def test_documents_are_validated_by_kind():
    from seqmix.bench.schema import SchemaError

    assert gpu_check.validate_any({"schema": "seqmix.ttt-tp/v1", "anything": 1}) == "other"
    assert gpu_check.validate_any({"schema": gpu_check.TESTS_SCHEMA, "counts": {}, "cases": []}) == "tests"
    for bad in ({"records": []}, {"schema": "seqmix.bench/v2", "records": []}, {"schema": gpu_check.TESTS_SCHEMA}):
        with pytest.raises(SchemaError):
            gpu_check.validate_any(bad)


def test_stage_over_budget_is_killed_and_reported(tmp_path):
    stage = gpu_kit.Stage("sleepy", 1, ("-c", "import time; time.sleep(60)"), (), document=None)
    t0 = time.time()
    with open(tmp_path / "log.txt", "w") as log:
        entry = gpu_check.run_stage(stage, tmp_path, log, dry_run=False, notes=[], budget_scale=1.0)
    assert entry["status"] == "timeout" and time.time() - t0 < 15


def test_bench_deadline_skips_points(monkeypatch):
    monkeypatch.setenv("SEQMIX_BENCH_DEADLINE", str(time.time() - 1))
    assert "wall-clock budget" in SeriesBudget(10.0, 2**30).check(("x",), 16)
    monkeypatch.delenv("SEQMIX_BENCH_DEADLINE")
    assert SeriesBudget(10.0, 2**30).check(("x",), 16) is None


def test_kernels_import_from_a_plain_checkout():
    """On the GPU machine seqmix is not installed: `seqmix.kernels` (top-level kernels/) must import from the root."""
    code = (
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import seqmix.kernels.ttt_ref as m\n"
        "print(m.__file__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == ROOT / "kernels" / "ttt_ref.py"


@pytest.mark.slow
def test_dry_run_end_to_end_and_import(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    p = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    # at most 8 files, one folder level; the summary table is the last thing printed
    files = list(out.rglob("*"))
    assert len(files) <= MAX_FILES and all(f.is_file() and f.parent == out for f in files), files
    assert p.stdout.rstrip().splitlines()[-1].startswith("all stages ok: True")
    kit = json.loads((out / "kit.json").read_text())
    assert kit["dry_run"] and kit["ok"] and [s["name"] for s in kit["stages"]] == [s.name for s in gpu_kit.STAGES]
    for s in kit["stages"]:
        assert s["status"] == "ok" and s["document"] == f"{s['name']}.json", s
        assert gpu_check.validate_any(json.loads((out / s["document"]).read_text()))
    # the layer benchmark has a record for every (layer, CUDA backend); the harness a case for each
    layers_doc = json.loads((out / "layers.json").read_text())
    timed = {(n, b) for n, b in gpu_kit.contract_plan() if not gpu_kit.mixer_class(n).frame_input}  # see above
    assert timed <= {(r["name"], r["backend"]) for r in layers_doc["records"]}
    cases = {c["id"].split("[")[1].rstrip("]") for c in json.loads((out / "tests.json").read_text())["cases"]}
    assert {f"{n}-{b}-float32-default" for n, b in gpu_kit.contract_plan()} <= cases
    wh = kit["wheelhouse"]
    assert not wh["problems"] and (wh["present"] or "no wheelhouse" in wh["note"])

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gpu_import
    finally:
        sys.path.pop(0)
    with pytest.raises(SystemExit, match="dry run"):
        gpu_import.import_results(out, tmp_path / "results")
    dest = gpu_import.import_results(out, tmp_path / "results", allow_dry_run=True)
    assert dest.name.startswith("gpu-cpu-dry-run-")
    for stage in ("layers", "dit", "ttt-kernels"):
        doc = json.loads((dest / stage / "results.json").read_text())
        assert gpu_check.validate_any(doc) == "bench"
        assert doc["meta"]["gpu_check"]["kit_command"].startswith("bash scripts/gpu_check.sh --dry-run")
    readme = (dest / "README.md").read_text()
    assert "torch" in readme and "command: `bash scripts/gpu_check.sh --dry-run" in readme
    with pytest.raises(SystemExit, match="exists"):
        gpu_import.import_results(out, tmp_path / "results", allow_dry_run=True)


def test_second_try_of_one_stage_keeps_the_others(tmp_path, monkeypatch, capsys):
    """`--stages X` into the folder of an earlier run reruns X only; the other stages' entries and documents stay."""
    quick = (gpu_kit.Stage("one", 30, ("-c", "print('one')"), (), document=None),
             gpu_kit.Stage("two", 30, ("-c", "import sys; sys.exit(3)"), (), document=None))
    monkeypatch.setattr(gpu_kit, "STAGES", quick)
    args = ["--dry-run", "--out", str(tmp_path), "--wheelhouse", str(tmp_path / "none")]
    assert gpu_check_main(args) == 1
    assert [s["status"] for s in json.loads((tmp_path / "kit.json").read_text())["stages"]] == ["ok", "failed"]
    monkeypatch.setattr(gpu_kit, "STAGES", (quick[0], gpu_kit.Stage("two", 30, ("-c", "pass"), (), document=None)))
    assert gpu_check_main(args + ["--stages", "two"]) == 0
    kit = json.loads((tmp_path / "kit.json").read_text())
    assert [(s["name"], s["status"], bool(s.get("previous"))) for s in kit["stages"]] == [
        ("one", "ok", True), ("two", "ok", False)]
    assert capsys.readouterr().out.rstrip().splitlines()[-1] == "all stages ok: True"
    log = (tmp_path / "log.txt").read_text()
    assert log.count("===== stage one (") == 1 and log.count("===== stage two (") == 2
