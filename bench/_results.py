"""How the bench scripts write their reports under bench/results/ (imported by the scripts, which run as `python bench/X.py`)."""
from pathlib import Path


def write_keeping_notes(path, text:str, marker:str):
    "Write `text` to `path`, followed by the existing file's notes: everything from `marker` on (the bare marker if none)."
    path = Path(path)
    old = path.read_text() if path.is_file() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + (old[old.index(marker):] if marker in old else marker + "\n"))
