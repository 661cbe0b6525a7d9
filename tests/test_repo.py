"""Repository hygiene: the notebooks are clean and the exported library is in step with them."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _project_files():
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\n")
    return [f for f in out if f and (f.startswith(("nbs/", "attnwav2lip/")) or f == "pyproject.toml")
            and (ROOT / f).is_file()]


def test_nbdev_clean_and_export_change_nothing(tmp_path):
    files = _project_files()
    for f in files:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, tmp_path / f)
    for cmd in ("nbdev-clean", "nbdev-export"):
        subprocess.run([str(BIN / cmd)], cwd=tmp_path, check=True, capture_output=True)
    changed = [f for f in files if (tmp_path / f).read_bytes() != (ROOT / f).read_bytes()]
    new = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "attnwav2lip").rglob("*.py")
                 if str(p.relative_to(tmp_path)) not in files)
    assert not changed and not new, f"run nbdev-clean && nbdev-export and commit: changed {changed}, new {new}"


def test_readme_in_step_with_index_notebook():
    res = subprocess.run([sys.executable, "tools/readme.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
