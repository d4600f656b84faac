#!/usr/bin/env bash
# Whole-pipeline wall time of two code revisions on this machine, A/B in turn (farm-bench --vs pairs the runs,
# so the ratio holds while the machine's speed drifts): is a refactor slower than the code before it?
#
#   bash bench/ab_revisions.sh OLD_REV [NEW_REV]     # NEW_REV defaults to HEAD; about 35 minutes on 2 cores
#
# Each revision is cloned into $AB_DIR (default /tmp/ab-revisions) with its own .venv (make setup) and DVC
# cache, its params.yaml shrunk to a short training budget (TEACHER_EPOCHS=10, STUDENT_EPOCHS=4; every other
# key as the revision has it, so each runs its own default), then `dvc repro --force` of every stage is timed
# RUNS times (default 2) per revision. Training is a smaller share here than in the default run, so a ratio
# near 1 here bounds the default's too: the same stages, the same number of process starts, shorter training.
# Quote the printed median ratio (A = NEW, B = OLD) with the `lscpu` model line printed first.
set -euo pipefail

old=${1:?usage: bash bench/ab_revisions.sh OLD_REV [NEW_REV]}
new=${2:-HEAD}
dir=${AB_DIR:-/tmp/ab-revisions}
runs=${RUNS:-2}
repo=$(git rev-parse --show-toplevel)

lscpu | grep -E '^(Model name|CPU family|Model):' | tr -s ' '
mkdir -p "$dir"
for side in old new; do
    rev=${!side}
    [ -d "$dir/$side" ] || git clone -q "$repo" "$dir/$side"
    git -C "$dir/$side" fetch -q "$repo"
    git -C "$dir/$side" checkout -q --force "$(git -C "$repo" rev-parse "$rev")"
    echo "$side: $(git -C "$dir/$side" log --oneline -1 | cut -c1-100)"
    make -C "$dir/$side" setup >"$dir/$side-setup.log" 2>&1 || { tail -20 "$dir/$side-setup.log"; exit 1; }
    "$dir/$side/.venv/bin/python" - "$dir/$side/params.yaml" <<'PY'
import os, sys
import yaml

path = sys.argv[1]
raw = yaml.safe_load(open(path))
teacher, student = int(os.environ.get("TEACHER_EPOCHS", 10)), int(os.environ.get("STUDENT_EPOCHS", 4))
raw["teacher"]["optim"].update(epochs=teacher, eval_every=teacher)
raw["student"]["optim"].update(epochs=student, eval_every=student)
with open(path, "w") as f:
    yaml.safe_dump(raw, f, sort_keys=False)
PY
done

# each side's stages run its own venv's python (dvc.yaml says `python -m stages...`), as `make run` arranges
repro() { echo "cd $dir/$1 && export PATH=$dir/$1/.venv/bin:\$PATH && exec dvc repro --force >>$dir/$1-repro.log 2>&1"; }
farm-bench -n "$runs" --warmup 0 --timeout 3600 --vs "sh -c '$(repro old)'" -- sh -c "$(repro new)"
