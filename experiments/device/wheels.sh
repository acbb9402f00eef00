#!/usr/bin/env bash
# Here (where pip reaches the registries): download the wheels the GPU machine lacks into .whl/,
# for experiments/device/checks.sh to install there. The lent machine's image has jax 0.11.2,
# numpy, scipy, xarray, pandas, scikit-learn, tensorstore and the rest; these are the imports
# of the benchmarks it does not have (healpy and its astropy, numcodecs), plus our pinned flax,
# optax, orbax-checkpoint and chex so the model code runs on the versions it was tested with.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
pins() { grep -E "^($1)==" constraints.txt; }  # the versions `make test` passed with
rm -rf .whl && mkdir .whl
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  $(pins 'healpy|numcodecs|flax|optax|orbax-checkpoint|chex|astropy|astropy-iers-data|pyerfa|google-crc32c')
ls .whl && du -sh .whl
