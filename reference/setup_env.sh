#!/usr/bin/env bash
# Create (or reuse) .venv-reference at the repository root: the model card's environment, where mantis-vl's
# Idefics2ForSequenceClassification runs on transformers 4.52.4. See reference/requirements.txt.
#
# Idempotent: when the venv exists, imports the recipe's stack, and was built from the current
# requirements.txt (a stamp holds its sha256), it is left alone. Anything else rebuilds it from scratch.
#
# Needs only python3.11, pip and access to the package registry (and, on this kind of machine, the local
# torch CPU wheel that pip's find-links already points at). Override the interpreter with PYTHON=...
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-reference"
REQ="$ROOT/reference/requirements.txt"
MANTIS="mantis-vl==0.0.5"
PYTHON="${PYTHON:-python3.11}"
STAMP="$VENV/.videoscore-reference-stamp"

want_stamp="$( (sha256sum "$REQ"; echo "$MANTIS") | sha256sum | cut -d' ' -f1)"

venv_works() {
    [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]] || return 1
    "$VENV/bin/python" - <<'PY' >/dev/null 2>&1
import av, numpy, PIL, safetensors, torch, transformers
import mantis.models.idefics2  # noqa: F401  (fails on transformers 5.x: the point of this venv)
assert transformers.__version__ == "4.52.4", transformers.__version__
assert torch.__version__.startswith("2.13.0"), torch.__version__
PY
}

if venv_works; then
    echo "reference env: $VENV is up to date"
    exit 0
fi

start=$SECONDS
echo "reference env: building $VENV with $PYTHON"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"
# --no-deps: mantis-vl's metadata pins datasets==2.18.0 and torchvision; its idefics2 module needs neither.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "$MANTIS"

torch_version="$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
if [[ "$torch_version" != *"+cpu" ]]; then
    echo "reference env: warning: torch $torch_version is not the CPU wheel (is /opt/wheels on pip's find-links?)" >&2
fi
echo "$want_stamp" > "$STAMP"
if ! venv_works; then
    echo "reference env: $VENV was built but cannot import the recipe's stack" >&2
    exit 1
fi
echo "reference env: ready in $((SECONDS - start)) s (torch $torch_version)"
