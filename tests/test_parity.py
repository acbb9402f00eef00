"""The port against the published model's fixtures, checkpoint conversion and its failure modes."""

from __future__ import annotations

import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from mosaic_jax.checkpoint import load_model
from mosaic_jax.cli import main as cli
from mosaic_jax.convert import read_state_dict, state_dict_to_params
from mosaic_jax.config import get_config
from mosaic_jax.parity import PARITY_TOLERANCE, run_parity
from mosaic_jax.torch_zip import load_torch_checkpoint


def test_parity_from_fixture_weights(parity_npz):
    result = run_parity(parity_npz)
    assert result.max_abs_err <= PARITY_TOLERANCE, result
    assert result.rel_l2_err < 1e-5


def test_parity_cli_last_line(parity_npz):
    out = subprocess.run([sys.executable, "-m", "mosaic_jax.cli", "check-parity", str(parity_npz)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    fields = dict(kv.split("=") for kv in last.split())
    assert set(fields) == {"max_abs_err", "rel_l2_err"} and float(fields["max_abs_err"]) <= PARITY_TOLERANCE


def test_parity_fails_with_wrong_weights(parity_npz, tmp_path):
    """The check can fail: perturb one weight and the command exits 1."""
    with np.load(parity_npz) as npz:
        data = {k: npz[k] for k in npz.files}
    data["param/postprocess.3.weight"] = data["param/postprocess.3.weight"] * 1.01
    bad = tmp_path / "bad.npz"
    np.savez(bad, **data)
    assert cli(["check-parity", str(bad)]) == 1


def test_pt_checkpoint_converts_to_orbax_and_reproduces(parity_npz, parity_pt, tmp_path):
    assert cli(["convert", str(parity_pt), "--config", "tiny", "--out", str(tmp_path / "model")]) == 0
    cfg, params = load_model(tmp_path / "model")
    assert cfg == get_config("tiny")
    with np.load(parity_npz) as npz:
        expected = state_dict_to_params({k[6:]: npz[k] for k in npz.files if k.startswith("param/")}, cfg)
    for path in (("to_noise", "kernel"), ("encoder_stages_1", "blocks_0", "attention", "to_q", "kernel")):
        a, b = params, expected
        for p in path:
            a, b = a[p], b[p]
        np.testing.assert_array_equal(np.asarray(a), b)
    # And the .pt weights give the fixture's outputs.
    assert run_parity(parity_npz, checkpoint=parity_pt).max_abs_err <= PARITY_TOLERANCE


def test_pt_reader_matches_npz_and_skips_derived_buffers(parity_npz, parity_pt):
    sd = read_state_dict(parity_pt)
    with np.load(parity_npz) as npz:
        for name, value in sd.items():
            if name.endswith(".weight"):
                np.testing.assert_array_equal(value, npz["param/" + name.removeprefix("model.")])
    state_dict_to_params(sd, get_config("tiny"))  # buffers such as neighbors/rel_pos are ignored


def test_convert_reports_missing_unexpected_and_misshaped(parity_npz):
    with np.load(parity_npz) as npz:
        sd = {k[6:]: npz[k] for k in npz.files if k.startswith("param/")}
    cfg = get_config("tiny")
    missing = dict(sd)
    del missing["bottleneck.blocks.0.ffn.w2.weight"]
    with pytest.raises(ValueError, match=r"missing weights \(1\):\n  bottleneck.blocks.0.ffn.w2.weight"):
        state_dict_to_params(missing, cfg)
    with pytest.raises(ValueError, match=r"unexpected weights \(1\):\n  encoder_stages.9.blocks.0.ffn.w2.weight"):
        state_dict_to_params({**sd, "encoder_stages.9.blocks.0.ffn.w2.weight": np.zeros((2, 2))}, cfg)
    with pytest.raises(ValueError, match=r"mis-shaped weights:\n  preprocess.0.weight: checkpoint \(64, 170\)"):
        state_dict_to_params({**sd, "preprocess.0.weight": np.zeros((64, 170))}, cfg)
    with pytest.raises(ValueError, match="mis-shaped"):
        state_dict_to_params(sd, get_config("paper-era5"))


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_torch_reader_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"model_state_dict": _Evil()}, protocol=2))
        z.writestr("evil/byteorder", "little")
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to unpickle (builtins|__builtin__).print"):
        load_torch_checkpoint(path)


def test_prefixes_are_stripped(parity_npz):
    with np.load(parity_npz) as npz:
        sd = {"_orig_mod.module.model." + k[6:]: npz[k] for k in npz.files if k.startswith("param/")}
    params = state_dict_to_params(sd, get_config("tiny"))
    assert params["to_noise"]["kernel"].shape == (32, 32)
