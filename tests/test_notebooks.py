"""Every notebook in `nbs/` runs top to bottom with its default parameters (nbdev's test runner, wrapped for pytest)."""
from pathlib import Path

import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT / "nbs").rglob("*.ipynb")
                   if not any(part.startswith(("_", ".")) for part in p.relative_to(ROOT / "nbs").parts))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(nb):
    skip = get_config(ROOT).tst_flags.split()
    ok, seconds = run_notebook(nb, skip_flags=skip, showerr=True)
    assert ok, f"{nb.name} failed (see the traceback above)"
