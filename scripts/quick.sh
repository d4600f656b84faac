#!/usr/bin/env bash
# make quick: every stage of the default pipeline on profiles/quick.yaml, a smoke run of about 5 minutes.
# It runs in its own workspace, .quick/ (git-ignored, DVC-ignored), rebuilt from this working tree each
# time, so this project's dvc.lock, metrics/, reports/, models/ and data/ are never touched. MLflow runs go
# to this project's store, experiment noisy-student-quick (tracking.experiment in the profile).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$root/.quick

rm -rf "$work"
mkdir -p "$work"
# tracked and new (not ignored) files, uncommitted edits included; no committed results, so every stage runs
git ls-files -z --cached --others --exclude-standard -- . ':(exclude)dvc.lock' ':(exclude)metrics' \
  ':(exclude)reports' | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"  # listed but deleted in the working tree
done | tar --null -T - -cf - | tar -xf - -C "$work"
python -m noisy_student.profiles params.yaml profiles/quick.yaml --out "$work/params.yaml"

# DVC records the pipeline against a git commit (dvc.lock, `dvc exp run`), MLflow tags runs with it
git -C "$work" init -q
git -C "$work" config user.name >/dev/null || git -C "$work" config user.name "make quick"
git -C "$work" config user.email >/dev/null || git -C "$work" config user.email "quick@localhost"
git -C "$work" add -A
git -C "$work" commit -q -m "make quick: profiles/quick.yaml on $(git rev-parse --short HEAD) + working tree"

# this project's root for the stages, as DVC_ROOT is inside a queued experiment's temporary copy: MLflow runs
# and artifacts go to its mlflow.db and mlartifacts/ (experiment tracking.experiment), where they outlive the
# next `make quick`; resumable checkpoints to its .checkpoints/, keyed by run
export NOISY_STUDENT_ROOT=$root
# the workspace's own code, not the editable install's (the same files until this tree is edited again)
export PYTHONPATH="$work/src${PYTHONPATH:+:$PYTHONPATH}"

cd "$work"
dvc repro
# the results become the baseline commit: `dvc exp run` / `dvc exp show` then compare an experiment with them
git add -A
git commit -q -m "make quick: results"

cat <<EOF

make quick: done, a smoke run of every stage. With this few images and epochs it does NOT show the
method's gain; the default pipeline (make run) does.
  report:   .quick/reports/report.md
  metrics:  cd .quick && dvc metrics show
  MLflow:   noisy-student ui (experiment noisy-student-quick)
  try:      cd .quick && NOISY_STUDENT_ROOT=$root dvc exp run -S noise.randaugment_magnitude=15
            dvc metrics diff --targets metrics/eval-it1.json metrics/eval-it2.json   (the experiment vs this run)
EOF
