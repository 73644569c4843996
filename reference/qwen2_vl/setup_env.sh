#!/usr/bin/env bash
# Create (or reuse) .venv-reference-qwen at the repository root: the VideoScore-Qwen2-VL example's environment,
# where mantis-vl's Qwen2VLForSequenceClassification runs on transformers 4.46.3 with qwen-vl-utils 0.0.8.
# See reference/qwen2_vl/requirements.txt.
#
# Idempotent: when the venv exists, imports the recipe's stack, and was built from the current requirements
# (a stamp holds their sha256), it is left alone. Anything else rebuilds it from scratch. Override the
# interpreter with PYTHON=...
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.venv-reference-qwen"
REQ="$ROOT/reference/qwen2_vl/requirements.txt"
MANTIS="mantis-vl==0.0.5"
PYTHON="${PYTHON:-python3.11}"
STAMP="$VENV/.videoscore-reference-stamp"

want_stamp="$( (sha256sum "$REQ"; echo "$MANTIS") | sha256sum | cut -d' ' -f1)"

venv_works() {
    [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]] || return 1
    # Imports recipe.py itself: it is what must work (it carries the torchvision workaround).
    (cd "$ROOT/reference/qwen2_vl" && "$VENV/bin/python" - <<'PY') >/dev/null 2>&1
import recipe  # noqa: F401  (mantis.models.qwen2_vl, qwen_vl_utils, torchvision, transformers)
import torch, transformers
assert transformers.__version__ == "4.46.3", transformers.__version__
assert torch.__version__.startswith("2.13.0"), torch.__version__
PY
}

if venv_works; then
    echo "reference env (qwen2-vl): $VENV is up to date"
    exit 0
fi

start=$SECONDS
echo "reference env (qwen2-vl): building $VENV with $PYTHON"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "$MANTIS"
echo "$want_stamp" > "$STAMP"
if ! venv_works; then
    echo "reference env (qwen2-vl): $VENV was built but cannot import the recipe's stack" >&2
    exit 1
fi
echo "reference env (qwen2-vl): ready in $((SECONDS - start)) s"
