"""Render `nbs/index.ipynb` to `README.md` (Quarto, which `nbdev-readme` needs, cannot be installed offline).

`python tools/readme.py` writes README.md; `python tools/readme.py --check` fails if it is out of step.
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def render(nb_path=ROOT / "nbs" / "index.ipynb") -> str:
    cells = json.loads(Path(nb_path).read_text())["cells"]
    parts = []
    for c in cells:
        src = "".join(c["source"]).strip()
        if not src or src.startswith("#| hide"):
            continue
        if c["cell_type"] == "markdown":
            parts.append(src)
        elif c["cell_type"] == "code":
            parts.append("```python\n" + "\n".join(l for l in src.splitlines() if not l.startswith("#|")) + "\n```")
    return "<!-- generated from nbs/index.ipynb by tools/readme.py: edit the notebook, not this file -->\n\n" + "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if (ROOT / "README.md").read_text() == text else "README.md is out of step: run python tools/readme.py")
    (ROOT / "README.md").write_text(text)
