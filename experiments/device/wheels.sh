#!/usr/bin/env bash
# Here (where pip reaches the registries): download the wheels the GPU machine lacks into .whl/,
# for experiments/device/checks.sh to install there. The lent machine's image has jax 0.11.2,
# numpy, scipy, xarray, pandas, scikit-learn, tensorstore and the rest; these are the imports
# of the benchmarks it does not have (healpy and its astropy, numcodecs), plus our pinned flax,
# optax, orbax-checkpoint and chex so the model code runs on the versions it was tested with.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
pins() { grep -E "^\s+($1)==" setup.cfg | tr -d ' '; }
rm -rf .whl && mkdir .whl
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  $(pins 'healpy|numcodecs|flax|optax|orbax-checkpoint|chex') \
  "astropy==$("$PY" -m pip show astropy | awk '/^Version/{print $2}')" \
  "astropy-iers-data==$("$PY" -m pip show astropy-iers-data | awk '/^Version/{print $2}')" \
  "pyerfa==$("$PY" -m pip show pyerfa | awk '/^Version/{print $2}')" \
  "google-crc32c==$("$PY" -m pip show google-crc32c | awk '/^Version/{print $2}')"
ls .whl && du -sh .whl
