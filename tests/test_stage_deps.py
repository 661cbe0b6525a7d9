"""dvc.yaml is truthful: every stage depends on every package module its notebook runs — imported directly, through
the params sections it reads (`attnwav2lip.params` imports a section's module when the section is used), or through
other modules — and lists under `params` every section it reads."""
import ast
import json
import re
from pathlib import Path

import pytest
import yaml

from attnwav2lip.params import READS, SECTIONS

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "attnwav2lip"
ASSETS = {"faces": "attnwav2lip/assets"}   # modules that read files of the package at run time


def package_imports(source:str) -> set:
    "Package modules imported anywhere in `source` (top level or inside functions); '__init__' for the package itself."
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            name = ("attnwav2lip." + (node.module or "")) if node.level == 1 else (node.module or "")
            if name == "attnwav2lip" or name == "attnwav2lip.": found |= {"__init__"} | {a.name for a in node.names if (PKG / f"{a.name}.py").is_file()}
            elif name.startswith("attnwav2lip."): found.add(name.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("attnwav2lip.")}
    return found


def closure(modules:set) -> set:
    todo, seen = list(modules), set()
    while todo:
        m = todo.pop()
        if m in seen: continue
        seen.add(m)
        todo += package_imports((PKG / f"{m}.py").read_text()) - seen
    return seen


def sections_read(code:str) -> set:
    "The params sections a stage's code reads: attributes named like a section, and what the functions it calls read."
    attrs, names = set(re.findall(r"\.(\w+)\b", code)), set(re.findall(r"\b(\w+)\(", code))
    todo = [n for n in attrs if n in SECTIONS] + [n for n in (attrs | names) if n in READS and n not in SECTIONS]
    seen = set()
    while todo:
        s = todo.pop()
        if s not in seen: seen.add(s); todo += list(READS.get(s, ()))
    return seen & set(SECTIONS)


def _stages():
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _notebook_code(stage) -> str:
    nb = re.search(r"pipeline/\S+\.ipynb", stage["cmd"]).group(0)
    return "\n".join("".join(c["source"]) for c in json.loads((ROOT / nb).read_text())["cells"] if c["cell_type"] == "code")


@pytest.mark.parametrize("name", list(_stages()))
def test_stage_depends_on_what_it_runs(name):
    stage = _stages()[name]
    code = _notebook_code(stage)
    sections = sections_read(code)
    modules = closure(package_imports(code) | {SECTIONS[s][0].split(".")[1] for s in sections})
    need = {f"attnwav2lip/{m}.py" for m in modules} | {ASSETS[m] for m in modules if m in ASSETS}
    deps = set(stage["deps"])
    assert need <= deps, f"stage {name}: deps omit {sorted(need - deps)}"
    assert sections <= set(stage.get("params", [])), f"stage {name}: params omit {sorted(sections - set(stage.get('params', [])))}"


def test_the_checker_sees_imports():
    "The checker finds module-level, function-level and relative imports, and a section's module through params."
    src = "from attnwav2lip.train import fit\ndef f():\n    from .lse import x\nimport attnwav2lip.faces\nfrom attnwav2lip import __version__"
    assert package_imports(src) == {"train", "lse", "faces", "__init__"}
    assert {"data", "expert_model", "expert", "preprocess"} <= sections_read("p = load_params(f)\np.expert_run(crops)")
    assert "evaluate" in closure({"report"}) and "inference" in closure({"evaluate"})
