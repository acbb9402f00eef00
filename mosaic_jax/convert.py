"""Published checkpoints -> Flax parameter trees.

Reads a published-style torch checkpoint (``{'model_state_dict': ..., 'epoch': ...}``)
through ``torch_zip`` (no torch needed) or a fixture ``.npz`` (``param/<name>`` keys), maps
each weight to the Flax tree (torch Linear ``(out, in)`` -> kernel ``(in, out)``), and fails
loudly on a missing, unexpected or mis-shaped weight.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from mosaic_jax.config import ModelConfig
from mosaic_jax.model import param_shapes

# Wrappers that training frameworks put in front of parameter names.
_PREFIXES = ("_orig_mod.", "module.", "model.")
# Derived buffers the release stores but a loader recomputes (neighbours, rel_pos, statics, RoPE).
_DERIVED = re.compile(r"(neighbo|rel_pos|static|rope|freqs|cos_cached|sin_cached|inv_freq|_idx|indices|"
                      r"xyz|latlon|healpix|num_batches_tracked|grid)", re.IGNORECASE)
# Torch module paths whose Flax names differ (Sequential indices given meaning).
_RENAMES = {
    "noise_generator.to_noise": "to_noise",
    "preprocess.0": "preprocess_in",
    "preprocess.3": "preprocess_out",
    "postprocess.1": "postprocess_hidden",
    "postprocess.3": "postprocess_out",
}


def strip_prefixes(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if name.startswith(p):
                name, changed = name[len(p):], True
    return name


def torch_to_flax_path(name: str) -> tuple[str, ...]:
    """``encoder_stages.0.blocks.1.attention.to_q.weight`` -> ``(encoder_stages_0, blocks_1, attention, to_q, kernel)``."""
    if not name.endswith(".weight"):
        raise ValueError(f"unexpected parameter {name!r}: the published model has only Linear weights")
    module = name[: -len(".weight")]
    for old, new in _RENAMES.items():
        if module == old:
            module = new
    module = re.sub(r"\.(\d+)(?=\.|$)", r"_\1", module)
    return (*module.split("."), "kernel")


def flax_to_torch_name(path: tuple[str, ...]) -> str:
    """Inverse of ``torch_to_flax_path`` (for messages and export)."""
    module = ".".join(path[:-1])
    module = re.sub(r"_(\d+)(?=\.|$)", r".\1", module)
    for old, new in _RENAMES.items():
        if module == new:
            module = old
    return module + ".weight"


def is_derived_buffer(name: str) -> bool:
    """A non-weight entry the loader recomputes from the config (never trusted from the file)."""
    return not name.endswith(".weight") and bool(_DERIVED.search(name))


def state_dict_to_params(state_dict: Mapping[str, np.ndarray], cfg: ModelConfig) -> dict[str, Any]:
    """Map a torch-named state dict onto the Flax tree of ``cfg``; every mismatch is an error."""
    expected = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(param_shapes(cfg)).items()}
    flat: dict[tuple[str, ...], np.ndarray] = {}
    unexpected, misshaped, misshaped_paths = [], [], set()
    for raw_name, value in state_dict.items():
        name = strip_prefixes(raw_name)
        if is_derived_buffer(name):
            continue
        try:
            path = torch_to_flax_path(name)
        except ValueError:
            unexpected.append(name)
            continue
        if path not in expected:
            unexpected.append(name)
            continue
        arr = np.asarray(value, dtype=np.float32)
        kernel = arr.T if arr.ndim == 2 else arr
        if tuple(kernel.shape) != expected[path]:
            misshaped.append(f"{name}: checkpoint {tuple(arr.shape)} (torch layout), model expects "
                             f"{tuple(reversed(expected[path]))}")
            misshaped_paths.add(path)
            continue
        flat[path] = np.ascontiguousarray(kernel)
    missing = [flax_to_torch_name(p) for p in expected if p not in flat and p not in misshaped_paths]
    problems = []
    if misshaped:
        problems.append("mis-shaped weights:\n  " + "\n  ".join(misshaped))
    if missing:
        problems.append(f"missing weights ({len(missing)}):\n  " + "\n  ".join(missing[:20]))
    if unexpected:
        problems.append(f"unexpected weights ({len(unexpected)}):\n  " + "\n  ".join(unexpected[:20]))
    if problems:
        raise ValueError("checkpoint does not match the model config:\n" + "\n".join(problems))
    return traverse_util.unflatten_dict(flat)


def load_fixture_params(npz: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The ``param/<torch name>`` entries of a fixture as a torch-named state dict."""
    return {k[len("param/"):]: np.asarray(npz[k]) for k in npz.keys() if k.startswith("param/")}


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A torch-named state dict from a ``.pt``/``.pth`` checkpoint or a fixture ``.npz``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            sd = load_fixture_params(npz)
        if not sd:
            raise ValueError(f"{path}: no 'param/<name>' entries")
        return sd
    from mosaic_jax.torch_zip import load_torch_checkpoint

    obj = load_torch_checkpoint(path)
    if isinstance(obj, dict) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise ValueError(f"{path}: expected {{'model_state_dict': {{name: tensor}}}} or a state dict")
    return obj
