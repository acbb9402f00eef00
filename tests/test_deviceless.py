"""Compiling for H100s without one (mosaic_jax.deviceless): the report parser, and the sharded
train step compiled for 8 compile-only H100s. Skipped, saying why, where the CUDA PJRT plugin
or the CUDA toolkit is absent (``make install`` provides the plugin)."""

from __future__ import annotations

import math
import re

import jax
import pytest

from mosaic_jax import deviceless
from mosaic_jax.training import make_mesh
from mosaic_jax.training.metrics import CompiledMemory
from mosaic_jax.training.testing import micro_config, micro_train_config
from mosaic_jax.training.train_step import lower_train_step, train_step_compiler_options

needs_compiler = pytest.mark.skipif(deviceless.available() is not None,
                                    reason=f"no deviceless H100 compiler: {deviceless.available()}")


def _ptxas_block(regs: int, stores: int, loads: int, barriers: int = 16) -> str:
    return (f"ptxas info    : Compiling entry function 'kernel_mosaic_gpu_kernel' for 'sm_90a'\n"
            f"ptxas info    : Function properties for kernel_mosaic_gpu_kernel\n"
            f"    {stores} bytes stack frame, {stores} bytes spill stores, {loads} bytes spill loads\n"
            f"ptxas info    : Used {regs} registers, used {barriers} barriers, 1 bytes smem\n")


def test_kernel_log_pairs_each_kernels_smem_with_its_ptxas_report():
    log = ("Resources(smem_scratch_bytes=150528, tmem_scratch_cols=0)\n" + _ptxas_block(168, 0, 0)
           + "Resources(smem_scratch_bytes=1024, tmem_scratch_cols=0)\n" + _ptxas_block(255, 24, 56, 3))
    a, b = deviceless.parse_kernel_log(log)
    assert (a.registers, a.smem_bytes, a.spills, a.named_barriers) == (168, 150528, False, 16)
    assert (b.registers, b.smem_bytes, b.spill_store_bytes, b.spill_load_bytes, b.named_barriers) == (255, 1024, 24, 56, 3)
    assert b.spills
    with pytest.raises(RuntimeError, match="could not pair"):
        deviceless.parse_kernel_log(_ptxas_block(168, 0, 0))


def test_target_config_states_the_h100():
    text = deviceless.H100_SXM_80GB.target_config()
    assert "cuda_compute_capability { major: 9 minor: 0 }" in text
    assert "core_count: 132" in text
    assert deviceless.H100_SXM_80GB.usable_bytes(0.5) == deviceless.H100_SXM_80GB.memory_bytes // 2


def _async_collectives(hlo_text: str) -> int:
    """How many all-gathers and reduce-scatters the compiled program runs asynchronously
    (a start and a done that the scheduler can put compute between)."""
    return len(re.findall(r" (?:all-gather|reduce-scatter)-start\(", hlo_text))


@needs_compiler
def test_fsdp_train_step_on_eight_h100s_holds_an_eighth_of_the_state_per_device():
    """The (data x ensemble x fsdp) train step compiles for 8 GPUs, and FSDP divides the
    parameters and optimizer state that each device holds by the fsdp size; by default XLA
    overlaps FSDP's collectives with compute."""
    cfg = micro_config()

    def compile_step(devices: list, fsdp: int):
        tc = micro_train_config(batch_size=8, mesh_fsdp=fsdp, mesh_data=len(devices) // fsdp)
        lowered = lower_train_step(cfg, tc, make_mesh(len(devices) // fsdp, 1, fsdp, devices=devices))
        state_info = lowered.args_info[0][0]
        state_bytes = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state_info))
        return lowered.compile(train_step_compiler_options(tc)), state_bytes

    one, state = compile_step(deviceless.compile_only_devices(1), 1)
    eight, _ = compile_step(deviceless.compile_only_devices(8), 8)
    one_bytes, eight_bytes = (CompiledMemory.of(c).argument for c in (one, eight))
    assert one_bytes >= state
    # the state is 1/8 per device (up to the leaves that do not divide by 8), and so is the batch
    assert eight_bytes < one_bytes / 4, (eight_bytes, one_bytes)
    assert _async_collectives(eight.as_text()) > 0


@needs_compiler
def test_overlap_collectives_off_reaches_xla():
    """``TrainConfig.overlap_collectives=False`` compiles the step with XLA's latency-hiding
    scheduler off: FSDP's all-gathers and reduce-scatters run synchronously."""
    tc = micro_train_config(batch_size=8, mesh_fsdp=8, mesh_data=1, overlap_collectives=False)
    lowered = lower_train_step(micro_config(), tc, make_mesh(1, 1, 8, devices=deviceless.compile_only_devices(8)))
    text = lowered.compile(train_step_compiler_options(tc)).as_text()
    assert " all-gather(" in text  # the collectives are there, not overlapped
    assert _async_collectives(text) == 0


@needs_compiler
def test_kernel_modules_name_each_kernel_and_depend_only_on_its_code():
    """``kernel_modules`` (behind ``h100_compile.py fingerprint``) gives one text per kernel, names
    it, carries no source locations, does not change with what the process lowered before, and
    does change when the kernel's code does (here: one compute warpgroup instead of two)."""
    import jax.numpy as jnp

    from pallas_kernels.mosaic_attention.config import SelectionConfig
    from pallas_kernels.mosaic_attention.selection_kernel import selected_attention, selection_forward

    s = jax.ShapeDtypeStruct
    q, kv = s((1, 512, 4, 64), jnp.bfloat16), s((1, 512, 2, 64), jnp.bfloat16)
    idx = s((1, 2, 4, 2), jnp.int32)

    def forward(wgs):
        config = SelectionConfig(num_compute_wgs=wgs)
        return deviceless.kernel_modules(
            lambda q, k, v, i: selection_forward(q, k, v, i, block_size=128, config=config), q, kv, kv, idx)

    (two,) = forward(2)
    grads = deviceless.kernel_modules(
        jax.grad(lambda q, k, v, i: selected_attention(q, k, v, i, 128).sum(), argnums=(0, 1, 2)), q, kv, kv, idx)
    assert [re.search(r"module @(\w+)", t).group(1) for t in grads] == [
        "mosaic_selection_fwd", "mosaic_selection_bwd_dq", "mosaic_selection_bwd_dkv"]
    (one,) = forward(1)
    assert forward(2) == [two]
    assert one != two
    assert "loc(" not in two and "dump_basename" not in two
    with pytest.raises(ValueError, match="no Mosaic GPU kernel"):
        deviceless.kernel_modules(lambda x: x * 2, s((4,), jnp.float32))
