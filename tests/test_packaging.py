"""Packaging and installation: nothing in the repository root shadows an installed module, the locks agree with
pyproject's ranges, the wheel needs only torch (+ small helpers) and carries the recipes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: lock file -> (extras it installs, the environment its markers are evaluated in)
LOCKS = {
    "cpu-py311.txt": (("all", "dev"), {"python_version": "3.11", "python_full_version": "3.11.7"}),
    "gpu-py312.txt": (("train", "fla", "dev"), {"python_version": "3.12", "python_full_version": "3.12.3"}),
}
LINUX = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
         "implementation_name": "cpython", "platform_python_implementation": "CPython"}


# ---------------------------------------------------------------------------------------------- no shadowing
def test_no_repository_folder_is_an_importable_package_but_seqmix():
    """A folder of the repository root with an ``__init__.py`` is importable under its own name from the root
    (``python -m pytest``, ``python -c``, a notebook started there) and shadows any installed module of that name:
    ``kernels/`` did so to PyPI's ``kernels``, which transformers imports. Only ``seqmix`` may be a package."""
    offenders = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")
                       and (p / "__init__.py").exists() and p.name != "seqmix")
    assert not offenders, f"{offenders}: top-level folders must not have an __init__.py (they shadow installed modules)"
    modules = sorted(p.name for p in ROOT.glob("*.py"))
    assert not modules, f"{modules}: no importable module may sit in the repository root"


def test_installed_kernels_fla_and_diffusers_import_from_the_repository_root():
    """From the repository root, ``import kernels`` is PyPI's (when installed) and fla / diffusers / transformers
    import: the check the README's install section promises, run where it used to fail."""
    code = (
        "import importlib.util, json, sys\n"
        "out = {}\n"
        "for name in ('kernels', 'fla.layers', 'diffusers', 'transformers'):\n"
        "    if importlib.util.find_spec(name.split('.')[0]) is None:\n"
        "        continue\n"
        "    m = importlib.import_module(name)\n"
        "    out[name] = getattr(m, '__file__', None)\n"
        "print(json.dumps(out))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    found = json.loads(r.stdout.strip().splitlines()[-1])
    if "kernels" in found:
        assert found["kernels"] and "site-packages" in found["kernels"], found


def test_packaging_lists_every_subpackage():
    """pyproject lists packages explicitly (seqmix.kernels is kernels/, seqmix.recipes is recipes/): every seqmix/
    subpackage must be there, and the two folders must map where the package finds them."""
    cfg = PYPROJECT["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "seqmix").rglob("__init__.py")}
    # recipe folders that look importable are listed too (else setuptools warns on every build)
    found |= {".".join(("seqmix", "recipes", *d.relative_to(ROOT / "recipes").parts)) for d in (ROOT / "recipes").rglob("*")
              if d.is_dir() and all(part.isidentifier() for part in d.relative_to(ROOT / "recipes").parts)}
    missing = sorted(found - set(cfg["packages"]))
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"
    assert cfg["package-dir"] == {"seqmix.kernels": "kernels", "seqmix.recipes": "recipes"}
    import seqmix.kernels

    assert [Path(p).resolve() for p in seqmix.kernels.__path__] == [ROOT / "kernels"]
    from seqmix.utils.recipes import recipe_dir

    assert recipe_dir().resolve() == ROOT / "recipes"


# ---------------------------------------------------------------------------------------------- the locks
def _lock(name: str) -> dict[str, tuple[Version, int]]:
    """``{canonical name: (version, number of hashes)}`` of a lock file written by ``scripts/lock.sh``."""
    text = (ROOT / "requirements" / name).read_text()
    out: dict[str, tuple[Version, int]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        m = re.match(r"([A-Za-z0-9_.\-]+)==([^\s;\\]+)", block)
        if m:
            out[canonicalize_name(m.group(1))] = (Version(m.group(2)), block.count("--hash=sha256:"))
    return out


def _requirements(extras: tuple[str, ...]) -> list[Requirement]:
    """pyproject's requirements for ``extras`` (self-references such as ``seqmix[train]`` expanded)."""
    project = PYPROJECT["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for r in map(Requirement, project["optional-dependencies"][extra]):
            if canonicalize_name(r.name) == "seqmix":
                todo.extend(r.extras)
            else:
                reqs.append(r)
    return reqs


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_lock_agrees_with_pyproject(lock):
    """Every requirement of the extras a lock installs is in it at a version pyproject allows, every entry is
    hashed, and the pins of its input file hold. Regenerate with ``make lock`` when this fails."""
    extras, env = LOCKS[lock]
    pins = _lock(lock)
    marker_env = {**LINUX, **env, "extra": ""}
    problems = []
    for r in _requirements(extras):
        if r.marker is not None and not r.marker.evaluate(marker_env):
            continue
        name = canonicalize_name(r.name)
        if name not in pins:
            problems.append(f"{r} is not in the lock")
        elif not r.specifier.contains(pins[name][0], prereleases=True):
            problems.append(f"{r}: the lock has {pins[name][0]}")
    problems += [f"{n}=={v} has no hash" for n, (v, hashes) in pins.items() if hashes == 0]
    inputs = ROOT / "requirements" / lock.replace(".txt", ".in")
    for line in inputs.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            r = Requirement(line)
            got = pins.get(canonicalize_name(r.name), (None,))[0]
            if got is None or not r.specifier.contains(got, prereleases=True):
                problems.append(f"{inputs.name} pins {r}, the lock has {got}")
    assert not problems, f"requirements/{lock} disagrees with pyproject.toml (run `make lock`): {problems}"


def test_setup_installs_from_the_lock_only():
    """scripts/setup.sh installs with hashes and without resolving; the extras it names are the CPU lock's."""
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "--require-hashes --no-deps -r \"$LOCK\"" in setup and "LOCK=requirements/cpu-py311.txt" in setup
    assert "--no-deps --no-build-isolation -e ." in setup
    header = (ROOT / "requirements" / "cpu-py311.txt").read_text().splitlines()[0]
    assert "extras all,dev" in header, header


def test_gpu_wheelhouse_versions_come_from_the_gpu_lock():
    """`make gpu-wheels` carries exact versions of the GPU lock (no version written twice)."""
    script = (ROOT / "scripts" / "gpu_wheels.sh").read_text()
    assert "requirements/gpu-py312.txt" in script
    assert not re.search(r"^\s+[a-z\-]+==[0-9]", script, re.M), "versions belong in the lock, not in gpu_wheels.sh"


# ---------------------------------------------------------------------------------------------- the wheel
@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    import shutil

    # Built from a copy: setuptools builds in the source tree, and the checkout must stay as it is.
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for name in ("seqmix", "kernels", "recipes"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                        "-w", str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = out.glob("seqmix-*.whl")
    return whl


def test_wheel_requires_only_the_layers_dependencies(wheel):
    """Installing the wheel without extras brings torch, einops and numpy only (a layers-only install)."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    required = {canonicalize_name(Requirement(x.split(":", 1)[1]).name) for x in lines
                if x.startswith("Requires-Dist:") and "extra ==" not in x}
    assert required == {"torch", "einops", "numpy"}, required
    extras = {x.split(":", 1)[1].strip() for x in lines if x.startswith("Provides-Extra:")}
    assert {"train", "fla", "mamba", "video", "bench", "gpu", "dev", "all"} <= extras, extras


def test_wheel_carries_kernels_and_recipes_inside_the_package(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert "seqmix/kernels/ttt_triton.py" in names and "seqmix/kernels/ttt_tp.cu" in names
    recipes = {n for n in names if n.startswith("seqmix/recipes/")}
    want = {f"seqmix/recipes/{p.relative_to(ROOT / 'recipes')}" for p in (ROOT / "recipes").rglob("*.yaml")}
    assert want and want == recipes, sorted(want ^ recipes)[:10]
    assert not any(n.startswith(("kernels/", "recipes/", "tests/")) for n in names)


def test_marker_environment_is_a_real_one():
    """The markers of pyproject evaluate in the lock environments (a typo in a marker would silently drop a pin)."""
    for extras, env in LOCKS.values():
        for r in _requirements(extras):
            if r.marker is not None:
                Marker(str(r.marker)).evaluate({**LINUX, **env, "extra": ""})


# ---------------------------------------------------------------------------------------------- extras
def test_every_extra_named_for_a_module_exists():
    from seqmix.utils.extras import EXTRA_OF

    declared = set(PYPROJECT["project"]["optional-dependencies"])
    assert set(EXTRA_OF.values()) <= declared, set(EXTRA_OF.values()) - declared


@pytest.mark.parametrize("argv, module, extra", [
    (["fit", "--config", "mqar/full_attn"], "lightning", "train"),
    (["compare", "mqar", "--quick"], "jsonargparse", "train"),
])
def test_cli_names_the_missing_extra_in_one_line(argv, module, extra):
    """A command whose optional dependency is missing prints one line naming the extra and exits 2."""
    code = f"import sys; sys.modules[{module!r}] = None\nfrom seqmix.cli import main\nmain({argv!r})\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pip install 'seqmix[{extra}]'" in lines[0] and module in lines[0], r.stderr


def test_layers_need_only_torch():
    """``import seqmix`` and building / running every sequence layer load no training, plotting or fla module."""
    code = (
        "import sys, torch\n"
        "before = set(sys.modules)  # torch itself imports tqdm when it is installed\n"
        "import seqmix\n"
        "for name in seqmix.layers.sequence_mixers():\n"
        "    seqmix.build(name, dim=32, num_heads=2)(torch.randn(1, 16, 32))\n"
        "heavy = ('lightning', 'torchmetrics', 'jsonargparse', 'fla', 'diffusers', 'transformers', 'matplotlib',\n"
        "         'yaml', 'tqdm', 'safetensors', 'PIL', 'triton', 'mamba_ssm')\n"
        "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} & set(heavy)))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout


def test_builtin_recipes_are_found_by_name_not_by_the_working_directory(tmp_path, monkeypatch):
    from seqmix.utils.recipes import builtin_recipe, recipe_dir, resolve_recipe

    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes" / "base").mkdir(parents=True)
    (tmp_path / "recipes" / "base" / "mqar.yaml").write_text("unrelated: true\n")
    assert recipe_dir() == ROOT / "recipes"
    assert builtin_recipe("mqar/full_attn") == ROOT / "recipes" / "mqar" / "full_attn.yaml"
    assert builtin_recipe("recipes/base/mqar.yaml") == ROOT / "recipes" / "base" / "mqar.yaml"
    assert resolve_recipe("recipes/base/mqar.yaml") == "recipes/base/mqar.yaml"  # a user's file: as given
    with pytest.raises(FileNotFoundError, match="full_attn.yaml"):
        builtin_recipe("mqar/nope")
