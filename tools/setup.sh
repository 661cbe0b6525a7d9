# Set up (or reuse) the project's environment and activate it.  Use: `source tools/setup.sh`
# - inside an active virtual environment (or conda env) it installs there and keeps your torch;
# - otherwise it creates ./.venv and installs the CPU build torch==2.13.0 into it (never a CUDA download).
_aw_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# pip's exit status is kept; the filter drops the noise of unreachable local indexes (grep -v exits 1 on empty output)
_aw_pip() { ( set -o pipefail; python -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; } ); }
if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ]; then
  [ -x "$_aw_root/.venv/bin/python" ] || python3 -m venv "$_aw_root/.venv" || return 1
  . "$_aw_root/.venv/bin/activate"
fi
python -c "import torch" 2>/dev/null || _aw_pip install -q torch==2.13.0 || return 1
_aw_pip install -q -e "$_aw_root[dev]" || return 1
export DVC_NO_ANALYTICS=1 PYTHONUNBUFFERED=1
cd "$_aw_root"
