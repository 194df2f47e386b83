"""The package's import rules (``model.IMPORT_RULES``, written in ``model/__init__.py``): every
module of ``model/`` read as source, each import checked against its folder's rule; the
scripts import only ``model`` (the report alone runs the other scripts); and a broken rule is
caught (the checker run on a copy of the package with forbidden imports added)."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import model

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(path.stem for path in ROOT.glob("*.py"))
REPORT_SCRIPT = "visualize_all"  # runs every other script: the one script that imports them


def imported_modules(path, package_root):
    """The dotted names ``path`` imports: ``model.a.b`` for ``from model.a import b`` where
    ``b`` is a module (else ``model.a``), relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    own = path.relative_to(package_root.parent).with_suffix("").parts
    if own[-1] == "__init__":
        own = own[:-1]
        base = list(own)
    else:
        base = list(own[:-1])
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                stem = base[:len(base) - (node.level - 1)]
                module = ".".join(stem + ([node.module] if node.module else []))
            else:
                module = node.module
            for alias in node.names:
                candidate = package_root.parent.joinpath(*f"{module}.{alias.name}".split("."))
                is_module = candidate.with_suffix(".py").is_file() or candidate.is_dir()
                names.append(f"{module}.{alias.name}" if is_module else module)
    return names


def rule_violations(package_root, rules, read_only):
    """Every import in ``package_root`` (a ``model`` folder) that its folder's rule forbids,
    as ``file: module`` lines."""
    found = []
    for folder, rule in rules.items():
        for path in sorted((package_root / folder).rglob("*.py")):
            for name in imported_modules(path, package_root):
                parts = name.split(".")
                if parts[0] == "model" and len(parts) > 1 and parts[1] in rule["model"]:
                    if name in read_only and folder in ("figures", "report"):
                        continue
                    found.append(f"{path.relative_to(package_root.parent)}: {name}")
                elif parts[0] in rule["outside"]:
                    found.append(f"{path.relative_to(package_root.parent)}: {name}")
    return found


def test_every_folder_keeps_its_import_rules():
    assert rule_violations(ROOT / "model", model.IMPORT_RULES, model.READ_ONLY_MODULES) == []


def test_every_module_lives_in_a_folder_with_a_rule():
    loose = [path.name for path in (ROOT / "model").glob("*.py")
             if path.name not in ("__init__.py", "errors.py")]
    folders = sorted(path.name for path in (ROOT / "model").iterdir()
                     if path.is_dir() and (path / "__init__.py").is_file())
    assert loose == [] and folders == sorted(model.IMPORT_RULES)


def test_a_broken_rule_is_caught(tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(ROOT / "model", copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "attribution" / "cam.py", "a") as file:
        file.write("\nfrom model.training.loop import fit\nimport matplotlib.pyplot\n")
    with open(copy / "data" / "datasets.py", "a") as file:
        file.write("\nfrom ..attribution import occlusion\n")
    with open(copy / "report" / "page.py", "a") as file:
        file.write("\nfrom model.attribution.maps import normalize_maps\n"
                   "from model.attribution import cam\n")
    assert rule_violations(copy, model.IMPORT_RULES, model.READ_ONLY_MODULES) == [
        "model/data/datasets.py: model.attribution.occlusion",
        "model/attribution/cam.py: model.training.loop",
        "model/attribution/cam.py: matplotlib.pyplot",
        "model/report/page.py: model.attribution.cam",
    ]


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_import_only_model(script):
    """Imports point down: the report over the method scripts over ``model/``."""
    others = [name for name in imported_modules(ROOT / f"{script}.py", ROOT / "model")
              if name.split(".")[0] in SCRIPTS]
    assert others == [] or script == REPORT_SCRIPT


def test_the_package_and_the_benches_import_no_script():
    for path in [*(ROOT / "model").rglob("*.py"), *(ROOT / "bench").glob("*.py")]:
        names = imported_modules(path, ROOT / "model")
        assert not [name for name in names if name.split(".")[0] in SCRIPTS], path


def test_methods_load_neither_matplotlib_nor_training():
    """Imported, not just written: what the method folders pull in, module by module."""
    code = ("import sys; import model.attribution, model.units.mirror, "
            "model.units.activation_search, model.units.ascent, model.evaluation.faithfulness, "
            "model.evaluation.cost; "
            "print(sorted(m for m in sys.modules if m == 'matplotlib' or "
            "m.startswith(('model.training', 'model.figures', 'model.report', 'model.cli'))))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "[]"
