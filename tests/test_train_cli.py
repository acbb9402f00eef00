"""``mosaic-jax train``'s flags map onto TrainConfig (no training here; runs are tested elsewhere)."""

from __future__ import annotations

import dataclasses

import pytest

from mosaic_jax.cli import build_parser
from mosaic_jax.commands.train import train_config_from_args
from mosaic_jax.training import TrainConfig


def _parse(*extra: str):
    return build_parser().parse_args(["train", "--config", "demo", "--data", "d.zarr", "--workdir", "w", *extra])


def test_every_train_config_field_is_a_flag() -> None:
    args = _parse()
    for f in dataclasses.fields(TrainConfig):
        assert hasattr(args, f.name), f.name
    assert train_config_from_args(args) == TrainConfig()


def test_overrides(tmp_path) -> None:
    base = tmp_path / "run.json"
    base.write_text('{"batch_size": 8, "learning_rate": 0.01}')
    args = _parse("--train-config", str(base), "--learning-rate", "1e-4", "--rollout-steps", "4", "--no-remat",
                  "--mesh-data", "2", "--mesh-ensemble", "2", "--mesh-fsdp", "2", "--val-start", "2020-03-01",
                  "--variable-weights", "mean_sea_level_pressure=0.1, temperature=2")
    tc = train_config_from_args(args)
    assert (tc.batch_size, tc.learning_rate, tc.rollout_steps, tc.remat) == (8, 1e-4, 4, False)
    assert (tc.mesh_data, tc.mesh_ensemble, tc.mesh_fsdp, tc.val_start) == (2, 2, 2, "2020-03-01")
    assert tc.variable_weights == (("mean_sea_level_pressure", 0.1), ("temperature", 2.0))
    with pytest.raises(ValueError, match="crps_alpha"):
        train_config_from_args(_parse("--crps-alpha", "2"))


def test_forcing_the_kernels_without_a_hopper_gpu_stops_before_any_work(tmp_path, capsys) -> None:
    from mosaic_jax.cli import main

    workdir = tmp_path / "run"
    assert main(["train", "--config", "tiny", "--data", str(tmp_path / "absent.zarr"), "--workdir", str(workdir),
                 "--attention-impl", "pallas-fused"]) == 2
    assert "'pallas-fused' runs the Pallas Mosaic GPU kernels, which need a Hopper GPU" in capsys.readouterr().err
    assert not workdir.exists()
