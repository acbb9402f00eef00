"""``mosaic-jax train``: its flags map onto TrainConfig, and what it refuses before the first step
(training runs are tested elsewhere)."""

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


def test_a_step_too_large_for_the_device_stops_before_training_and_says_how_to_fit(tmp_path, monkeypatch) -> None:
    """The loop compares the compiled step's buffers with the allocator's limit (a GPU reports
    one; here a fake limit one byte short of what the step needs)."""
    import types

    from mosaic_jax.training import loop
    from mosaic_jax.training.metrics import CompiledMemory
    from mosaic_jax.training.testing import make_micro_store, micro_config, micro_train_config

    def check_with_a_limit_just_short(compiled, tc, num_devices, limit):
        assert limit is None  # the CPU reports no limit: the check passes unless a GPU says otherwise
        need = CompiledMemory.of(compiled).total
        real_check(compiled, tc, num_devices, need)  # fits exactly
        real_check(compiled, tc, num_devices, need - 1)

    real_check = loop.check_step_fits
    monkeypatch.setattr(loop, "check_step_fits", check_with_a_limit_just_short)
    store = make_micro_store(tmp_path / "micro.zarr", days=3)
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"needs \d+\.\d GiB per device .* --batch-size \(now 2\)") as e:
        loop.train(micro_config(), micro_train_config(eval_every=0), store, workdir, progress=False)
    assert "--no-overlap-collectives" not in str(e.value)  # one device: no collectives to stop overlapping
    assert not any((workdir / "checkpoints").glob("*"))

    # on a multi-device mesh the scheduler's overlap is named as a way to fit
    memory = types.SimpleNamespace(argument_size_in_bytes=3 << 30, output_size_in_bytes=1 << 30,
                                   alias_size_in_bytes=1 << 30, temp_size_in_bytes=40 << 30)
    compiled = types.SimpleNamespace(memory_analysis=lambda: memory)
    with pytest.raises(ValueError, match=r"needs 43\.0 GiB per device and JAX's allocator has 40\.0 GiB.*"
                                         r"--no-overlap-collectives"):
        real_check(compiled, micro_train_config(), 8, 40 << 30)
    real_check(compiled, micro_train_config(overlap_collectives=False), 8, 43 << 30)
    with pytest.raises(ValueError) as e:
        real_check(compiled, micro_train_config(overlap_collectives=False), 8, 42 << 30)
    assert "--no-overlap-collectives" not in str(e.value)
