"""The roofline reads FLOPs and bytes from compiled HLO: checked on CPU-compiled programs
against analytic counts, and the attention kernels' launch FLOPs against the branch definitions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from mosaic_jax import roofline
from pallas_kernels.mosaic_attention.flops import exp_to_matmul_time, kernel_launch_flops, mosaic_flops


def _costs(fn, *args, **kwargs) -> list[roofline.OpCost]:
    return roofline.op_costs(jax.jit(fn).lower(*args).compile().as_text(), **kwargs)


def test_matmul_flops_and_elementwise_bytes():
    x, y = jnp.ones((64, 128)), jnp.ones((128, 32))
    costs = _costs(lambda x, y: jnp.tanh(x @ y), x, y)
    matmul = [c for c in costs if c.category == "matmul"]
    assert sum(c.flops for c in costs) == 2 * 64 * 128 * 32
    assert len(matmul) == 1 and matmul[0].bytes >= (64 * 128 + 128 * 32 + 64 * 32) * 4
    # whatever XLA fuses, the program reads both inputs and writes the output at least once
    assert sum(c.bytes for c in costs) >= (64 * 128 + 128 * 32 + 64 * 32) * 4


def test_loop_body_counts_once_per_iteration():
    x = jnp.ones((32, 32))
    costs = _costs(lambda x: jax.lax.scan(lambda c, _: (jnp.sin(c @ x), None), x, None, length=5)[0], x)
    assert sum(c.count * c.flops for c in costs) == 5 * 2 * 32**3
    assert max(c.count for c in costs) == 5


def test_sliced_operand_counts_only_the_slice():
    x = jnp.ones((4096, 256))
    costs = _costs(lambda x: x[:8] * 2.0, x)
    # an 8-row slice read and written: far from the 4 MiB input
    assert sum(c.bytes for c in costs) <= 4 * 8 * 256 * 4


def test_custom_call_flops_come_from_the_caller():
    a = jnp.eye(64) * 2.0
    seen = []

    def flops(ins, operand_shapes):
        seen.append(operand_shapes)
        return 1e9

    costs = _costs(jnp.linalg.cholesky, a, custom_call_flops=flops)
    calls = [c for c in costs if c.category == "custom-call"]
    assert calls and all(c.flops == 1e9 for c in calls)
    assert any(roofline.shape_bytes(s) == 64 * 64 * 4 for shapes in seen for s in shapes)


def test_while_without_trip_count_is_refused():
    def fn(x):
        return jax.lax.while_loop(lambda c: c.sum() < 1e6, lambda c: c @ c + 1.0, x)

    with pytest.raises(ValueError, match="trip count"):
        _costs(fn, jnp.ones((8, 8)))


def test_seconds_is_the_slower_of_compute_and_memory():
    op = roofline.OpCost("f", "fusion", "matmul", "", "f32[1]", flops=4e12, bytes=1e9, count=2)
    assert op.seconds(1e15, 1e12) == pytest.approx(2 * 4e-3)  # compute-bound: 4 ms each
    assert op.seconds(1e15, 1e11) == pytest.approx(2 * 1e-2)  # memory-bound: 10 ms each
    total = roofline.summarize([op], 1e15, 1e11)
    assert total["total"].memory_bound_seconds == pytest.approx(2e-2)
    assert total["matmul"].flops == 8e12


def test_shape_bytes_of_tuples_and_dtypes():
    assert roofline.shape_bytes("(bf16[3072]{0}, f32[2,3]{1,0})") == 3072 * 2 + 6 * 4
    assert roofline.shape_bytes("s32[]") == 4


def test_module_path_groups_repeated_blocks():
    path = roofline.module_path("jit(step)/Mosaic/encoder_stages_0/blocks_1/ffn/w13/dot_general")
    assert path == "encoder_stages_*/blocks_*/ffn"
    assert roofline.module_path("jit(step)/Mosaic/interp_to_hp/gather", depth=3) == "interp_to_hp"
    backward = ("jit(train_step)/transpose(jvp())/while/body/eval_jaxpr/Mosaic/encoder_stages_0/encoder_stages_0/"
                "blocks_1/ffn/mul")
    assert roofline.module_path(backward) == "backward: encoder_stages_*/blocks_*/ffn"
    assert roofline.module_path("jit(train_step)/jit(tree_bias_correction)/div") == "(no module)"


@pytest.mark.parametrize("gqa", [1, 4])
def test_kernel_launch_flops_match_the_branch_definitions(gqa):
    b, n, hq, d, bs, top_k, block = 2, 4096, 8, 64, 128, 12, 1024
    hk, nb = hq // gqa, n // bs
    ref = mosaic_flops(b, n, hq, d, block_attn_size=block, sparse_block_size=bs, top_k=top_k)
    q = (b, n, hq, d)
    assert kernel_launch_flops("mosaic_selection_fwd", [(b, hk, nb, top_k), q]) == ref.selected
    assert kernel_launch_flops("mosaic_local_selected_fwd", [(b, hk, nb, block // bs + top_k), q]) == pytest.approx(
        ref.local + ref.selected)
    backward = (kernel_launch_flops("mosaic_selection_bwd_dq", [(b, hk, nb, top_k), q])
                + kernel_launch_flops("mosaic_selection_bwd_dkv", [(b, hk, nb * top_k), (b, hk, nb + 1), q]))
    assert backward == pytest.approx(3.5 * ref.selected)  # 7 products (recomputation included) against 2
    with pytest.raises(ValueError, match="unknown kernel"):
        kernel_launch_flops("flash", [q])


def test_compiled_h100_forecast_step_holds_the_models_flops():
    """The parser on real GPU HLO: the tiny model's forecast step compiled for an H100 (xla
    attention, so the selected branch is a while loop over its top-k blocks) holds the matrix
    FLOPs its jaxpr does, less the few tiny products (a contraction over 3 coordinates) that
    XLA rewrites as elementwise reductions: 0.09% here. Skipped where the deviceless compiler
    is absent."""
    from mosaic_jax import deviceless
    from mosaic_jax.config import get_config
    from mosaic_jax.model import param_shapes
    from mosaic_jax.sampler import EnsembleSampler, member_keys, member_step_flops

    if deviceless.available() is not None:
        pytest.skip(f"no deviceless H100 compiler: {deviceless.available()}")
    cfg = get_config("tiny")
    sharding = jax.sharding.SingleDeviceSharding(deviceless.compile_only_devices(1)[0])

    def s(shape, dtype=jnp.float32):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    params = jax.tree.map(lambda a: s(a.shape, a.dtype), param_shapes(cfg))
    keys = jax.eval_shape(lambda: member_keys(jax.random.key(0), jnp.arange(1)))
    sampler = EnsembleSampler(cfg, dtype=jnp.bfloat16, attention_impl="xla")
    compiled = jax.jit(sampler.step).trace(
        params, s((1, cfg.num_history_steps, cfg.n_lon, cfg.n_lat, cfg.num_channels)), s((1, 2)),
        s((cfg.n_lon, cfg.n_lat, cfg.num_static)), s(keys.shape, keys.dtype), s((), jnp.int32)).lower().compile()
    costs = roofline.op_costs(compiled.as_text())
    assert any(c.count > 1 for c in costs)  # the selected branch's loop, counted per iteration
    hlo_flops, jaxpr_flops = sum(c.count * c.flops for c in costs), member_step_flops(cfg)
    assert 0.995 * jaxpr_flops <= hlo_flops <= jaxpr_flops


def test_fusion_without_op_name_is_attributed_to_its_fused_ops():
    # XLA drops the op_name of ops it rewrites (here the fusion and its root reduce); the cost must
    # still land on the module whose ops were fused, not on "(no module)".
    hlo = """HloModule m

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%fused_reduce (p0: f32[8,4], p1: f32[8,4]) -> f32[8] {
  %p0 = f32[8,4]{1,0} parameter(0)
  %p1 = f32[8,4]{1,0} parameter(1)
  %m = f32[8,4]{1,0} multiply(%p0, %p1), metadata={op_name="jit(f)/transpose(jvp())/Mosaic/interp_to_ll/mul"}
  %z = f32[] constant(0)
  ROOT %r = f32[8]{0} reduce(%m, %z), dimensions={1}, to_apply=%add
}

ENTRY %main (x: f32[8,4], y: f32[8,4]) -> f32[8] {
  %x = f32[8,4]{1,0} parameter(0)
  %y = f32[8,4]{1,0} parameter(1)
  ROOT %f = f32[8]{0} fusion(%x, %y), kind=kInput, calls=%fused_reduce, metadata={scheduling_name="f"}
}
"""
    (cost,) = roofline.op_costs(hlo)
    assert roofline.module_path(cost.op_name) == "backward: interp_to_ll"
    assert cost.bytes == (2 * 8 * 4 + 8) * 4


def test_exponentials_cost_as_much_as_the_forward_matmuls_at_head_dim_64():
    """H100 SXM: 989.4 TFLOP/s dense bf16 against 3.87 T exp2/s (132 SMs x 16 x 1.83 GHz); a forward
    score costs one exp2 and 4*d FLOPs, so at d = 64 the two take the same time."""
    tensor, sfu = 989.4e12, 132 * 16 * 1.83e9
    for d in (64, 128, 256):
        assert exp_to_matmul_time("mosaic_selection_fwd", d) == pytest.approx((1 / sfu) / (4 * d / tensor), rel=1e-3)
    assert exp_to_matmul_time("mosaic_local_selected_fwd", 64) == pytest.approx(1.0)
    # the backward kernels take one exp2 per pair against 3 (dq) and 4 (dk/dv) products
    assert exp_to_matmul_time("mosaic_selection_bwd_dq", 64) == pytest.approx(2 / 3)
    assert exp_to_matmul_time("mosaic_selection_bwd_dkv", 64) == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match="unknown kernel"):
        exp_to_matmul_time("flash", 64)
