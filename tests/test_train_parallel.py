"""The same training on more devices and processes gives the same parameters.

Device counts are fixed when jax starts, so the check runs in a child process with 8 fake
CPU devices for the (data x ensemble x fsdp) mesh. The multi-process check (``jax.distributed``)
is in ``test_train_resume.py``, next to the 1-process run it compares with.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mosaic_jax.training.testing import parse_result, worker_env

MESH_CHECK = r"""
import json
import jax, numpy as np
from mosaic_jax.training import make_mesh, sharding as shd
from mosaic_jax.training.checkpointing import Checkpointer, abstract_with_shardings
from mosaic_jax.training.testing import micro_config, micro_train_config
from mosaic_jax.training.train_step import build_step_fns, init_state, jit_train_step

assert jax.device_count() == 8, jax.devices()
cfg, tc = micro_config(), micro_train_config(batch_size=4, learning_rate=1e-2, warmup_steps=0)
rng = np.random.default_rng(0)
grid = (cfg.n_lon, cfg.n_lat, cfg.num_channels)
batch = {"history": rng.standard_normal((4, 2, *grid)).astype(np.float32),
         "targets": rng.standard_normal((4, 1, *grid)).astype(np.float32),
         "day_year": rng.uniform(size=(4, 2)).astype(np.float32)}
static_np = rng.standard_normal((cfg.n_lon, cfg.n_lat, cfg.num_static)).astype(np.float32)
key = jax.random.PRNGKey(0)

def one_step(mesh):
    fns = build_step_fns(cfg, tc, mesh)
    abstract = jax.eval_shape(lambda k: init_state(cfg, tc, fns.tx, k), key)
    sh = shd.state_shardings(mesh, abstract, min_size=0)
    state = jax.jit(lambda k: init_state(cfg, tc, fns.tx, k), out_shardings=sh)(key)
    start = jax.tree_util.tree_map(np.asarray, state)
    step = jit_train_step(fns, sh, shd.batch_sharding(mesh), shd.replicated(mesh))
    static = jax.device_put(static_np, shd.replicated(mesh))
    new, m = step(state, shd.put_batch(batch, shd.batch_sharding(mesh)), static)
    return start, new, jax.device_get(m), sh, abstract

one = make_mesh(1, 1, 1, devices=jax.devices()[:1])
eight = make_mesh(2, 2, 2)
start1, s1, m1, _, abstract = one_step(one)
start8, s8, m8, sh8, _ = one_step(eight)
leaves = lambda t: [np.asarray(x) for x in jax.tree_util.tree_leaves(t)]
out = {
    "init_equal": all(np.array_equal(a, b) for a, b in zip(leaves(start1), leaves(start8))),
    "param_max_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(leaves(s1["params"]), leaves(s8["params"]))),
    "param_max_update": max(float(np.max(np.abs(a - b)))
                            for a, b in zip(leaves(s1["params"]), leaves(start1["params"]))),
    "opt_max_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(leaves(s1["opt_state"]), leaves(s8["opt_state"]))),
    "loss": [float(m1["loss"]), float(m8["loss"])],
    "grad_norm": [float(m1["grad_norm"]), float(m8["grad_norm"])],
    "fsdp_sharded_params": sum("fsdp" in str(x.sharding.spec) for x in jax.tree_util.tree_leaves(s8["params"])),
    "num_params": len(jax.tree_util.tree_leaves(s8["params"])),
}
# a checkpoint written from the 1-device mesh restores onto the 8-device mesh
ckpt = Checkpointer(__import__("sys").argv[1], keep=1, keep_best=0)
ckpt.save(1, s1, {"next_index": 1}, {"step": 1})
ckpt.wait()
restored, data, _ = ckpt.restore(1, abstract_with_shardings(abstract, sh8))
out["restore_equal"] = all(np.array_equal(a, b) for a, b in zip(leaves(s1), leaves(restored)))
out["restore_on_mesh"] = all(x.sharding == s for x, s in zip(jax.tree_util.tree_leaves(restored),
                                                            jax.tree_util.tree_leaves(sh8)))
out["data_state"] = data
ckpt.close()
print("RESULT " + json.dumps(out))
"""


def test_one_step_on_8_devices_matches_1_device(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    cache = tmp_path_factory.getbasetemp() / "jax_cache"
    proc = subprocess.run([sys.executable, "-c", MESH_CHECK, str(tmp_path / "ckpt")], capture_output=True, text=True,
                          env=worker_env(cache, cpu_devices=8), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = parse_result(proc.stdout)
    assert r["init_equal"]
    assert r["fsdp_sharded_params"] > r["num_params"] // 2  # FSDP really splits the parameters
    np.testing.assert_allclose(r["loss"][1], r["loss"][0], rtol=1e-5)
    np.testing.assert_allclose(r["grad_norm"][1], r["grad_norm"][0], rtol=1e-4)
    assert r["param_max_update"] > 1e-4  # the step moved the parameters ...
    assert r["param_max_diff"] < 1e-5    # ... identically up to float32 reduction order
    assert r["opt_max_diff"] < 1e-5
    assert r["restore_equal"] and r["restore_on_mesh"] and r["data_state"] == {"next_index": 1}
