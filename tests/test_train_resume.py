"""Whole training runs in child processes (a fresh jax each, as after a real interruption):
resume exactness, leftover temporary checkpoints, SIGTERM, the non-finite stop, and
2 processes joined by ``jax.distributed`` (gloo) against 1 process.

All runs share the micro model and one persistent compilation cache, so only the first
run of each program compiles.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from mosaic_jax.training.testing import (free_port, make_micro_store, micro_config, micro_train_config, parse_result,
                                         worker_env)


def _leaves(tree: object) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return worker_env(tmp_path_factory.getbasetemp() / "jax_cache", cpu_devices=1)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_micro_store(tmp_path_factory.mktemp("resume_store") / "micro.zarr")


def _start(store: Path, workdir: Path, env: dict[str, str], *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mosaic_jax.training.testing", str(store), str(workdir), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _run(store: Path, workdir: Path, env: dict[str, str], *extra: str) -> tuple[dict, str]:
    p = _start(store, workdir, env, *extra)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, f"{out[-2000:]}\n{err[-4000:]}"
    return parse_result(out), out


@pytest.fixture(scope="module")
def reference(store: Path, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """4 steps straight through (checkpoints at 2 and 4, validation at 2 and 4)."""
    workdir = tmp_path_factory.mktemp("reference")
    result, _ = _run(store, workdir, env)
    return result, workdir


def _restore(workdir: Path, step: int) -> tuple[dict, dict, dict]:
    from mosaic_jax.training.checkpointing import Checkpointer
    from mosaic_jax.training.train_step import init_state, make_optimizer

    cfg, tc = micro_config(), micro_train_config()
    abstract = jax.eval_shape(lambda k: init_state(cfg, tc, make_optimizer(tc), k), jax.random.PRNGKey(0))
    here = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # this process: 1 device, whatever saved it
    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=here), abstract)
    ckpt = Checkpointer(workdir / "checkpoints", keep=10, keep_best=0, async_save=False)
    try:
        return ckpt.restore(step, abstract)
    finally:
        ckpt.close()


def test_resume_is_bit_exact_and_ignores_tmp_checkpoints(store: Path, env: dict[str, str], reference: tuple,
                                                         tmp_path: Path) -> None:
    """N steps straight == N/2 steps, then a fresh process restoring and running N/2 more:
    parameters, optimizer state and data position bit for bit. A leftover temporary
    directory from an interrupted save (a later step) is ignored and cleaned up."""
    from mosaic_jax.checkpoint import load_model

    ref_result, ref_dir = reference
    half, _ = _run(store, tmp_path, env, "--max-steps", "2")
    assert half["step"] == 2 and half["stopped"] == "max_steps"
    assert not (tmp_path / "model").exists()
    junk = tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-1700000000"
    (junk / "state").mkdir(parents=True)
    (junk / "state" / "garbage").write_text("half-written")
    resumed, out = _run(store, tmp_path, env)
    assert "resumed from" in out and "(step 2)" in out
    assert not junk.exists()
    assert resumed["step"] == 4 and resumed["stopped"] == "done"
    assert resumed["loss"] == ref_result["loss"] and resumed["val_loss"] == ref_result["val_loss"]

    _, p_ref = load_model(ref_dir / "model")
    _, p_res = load_model(tmp_path / "model")
    for a, b in zip(_leaves(p_ref), _leaves(p_res)):
        np.testing.assert_array_equal(a, b)
    s_ref, d_ref, _ = _restore(ref_dir, 4)
    s_res, d_res, _ = _restore(tmp_path, 4)
    assert d_ref == d_res
    for a, b in zip(_leaves(s_ref), _leaves(s_res)):
        np.testing.assert_array_equal(a, b)


def test_two_processes_match_one(store: Path, env: dict[str, str], reference: tuple, tmp_path: Path) -> None:
    """``jax.distributed`` on localhost (gloo): 2 processes x 1 CPU device, each feeding half of
    every global batch, end with the parameters of the 1-process run (validation and
    checkpoints included)."""
    from mosaic_jax.checkpoint import load_model

    ref_result, ref_dir = reference
    port = free_port()
    procs = [_start(store, tmp_path, env, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                    "--process-id", str(i)) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, f"{out[-2000:]}\n{err[-4000:]}"
    r0, r1 = (parse_result(out) for out, _ in outs)
    assert r0["step"] == r1["step"] == 4
    np.testing.assert_allclose([r0["loss"], r1["loss"]], ref_result["loss"], rtol=1e-5)
    np.testing.assert_allclose(r0["val_loss"], ref_result["val_loss"], rtol=1e-5)
    _, p_two = load_model(tmp_path / "model")
    _, p_one = load_model(ref_dir / "model")
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(_leaves(p_two), _leaves(p_one))) < 1e-5
    _, data, meta = _restore(tmp_path, 4)
    assert meta["process_count"] == 2 and data == _restore(ref_dir, 4)[1]


def test_sigterm_checkpoints_and_exits_cleanly(store: Path, env: dict[str, str], tmp_path: Path) -> None:
    overrides = json.dumps({"total_steps": 100_000, "checkpoint_every": 100_000, "eval_every": 0})
    p = _start(store, tmp_path, env, "--overrides", overrides)
    lines = []
    assert p.stdout is not None
    for line in p.stdout:  # wait until it is training
        lines.append(line)
        if line.startswith("compiled train step"):
            break
    time.sleep(1.5)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-4000:]
    result = parse_result("".join(lines) + out)
    assert result["stopped"] == "signal" and result["step"] > 0
    state, data, meta = _restore(tmp_path, result["step"])
    assert int(state["step"]) == result["step"] == meta["step"]
    assert data["next_index"] == result["step"]


def test_nonfinite_streak_stops_training(store: Path, env: dict[str, str], tmp_path: Path) -> None:
    """Batches from step 3 on are NaN: step 3 is skipped and logged, step 4 is the second in a row
    and stops the run with a clear message (max_consecutive_nonfinite=2)."""
    overrides = json.dumps({"total_steps": 8, "max_consecutive_nonfinite": 2, "eval_every": 0, "checkpoint_every": 1})
    p = _start(store, tmp_path, env, "--overrides", overrides, "--nan-from-step", "3")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 3, f"{out[-2000:]}\n{err[-4000:]}"
    assert "step 3: non-finite loss" in out and "skipped (1 in a row, 1 in total)" in out
    assert "NONFINITE training stopped at step 4: 2 consecutive steps" in out
    s2, _, _ = _restore(tmp_path, 2)
    s3, _, _ = _restore(tmp_path, 3)
    assert int(s3["total_nonfinite"]) == 1
    for a, b in zip(_leaves((s2["params"], s2["opt_state"])), _leaves((s3["params"], s3["opt_state"]))):
        np.testing.assert_array_equal(a, b)


def test_mfu_divides_the_counted_model_flops(store: Path, env: dict[str, str], tmp_path: Path) -> None:
    """With a peak given, the run reports MFU from the train step's model FLOPs (counted from
    its jaxpr without remat, per device) over the measured step time."""
    from mosaic_jax.training.train_step import train_step_flops

    overrides = {"total_steps": 4, "eval_every": 0, "peak_tflops": 1.0}
    result, out = _run(store, tmp_path, env, "--overrides", json.dumps(overrides))
    expected = train_step_flops(micro_config(), micro_train_config(**overrides, remat=False))
    assert result["flops_per_step"] == expected
    assert result["mfu"] == pytest.approx(expected / (result["step_time"] * 1e12), rel=1e-9)
    assert "model FLOPs per device per step" in out
