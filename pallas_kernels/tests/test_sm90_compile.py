"""The kernels compile for the H100 (sm_90a), without a GPU: Mosaic GPU lowering, LLVM, ptxas.

Interpret mode checks what the kernels compute; it does not check that they compile: register
layouts, SMEM tiling, the wgmma/TMA lowering and ptxas's register allocation are only exercised
by the real compiler. ``mosaic_jax.deviceless`` runs it here through the CUDA PJRT plugin, at
the published shapes. Skipped (saying why) where the plugin or the CUDA toolkit is absent.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mosaic_jax import deviceless
from mosaic_jax.attention.api import BatchSharding, mosaic_attention
from mosaic_jax.training.metrics import CompiledMemory
from pallas_kernels.mosaic_attention import flops, fused_kernel
from pallas_kernels.mosaic_attention.config import PUBLISHED_STAGES, AttentionShape, SelectionConfig, local_tile_size
from pallas_kernels.mosaic_attention.selection_kernel import (
    selection_backward_dkv,
    selection_backward_dq,
    selection_forward,
)

pytestmark = pytest.mark.skipif(deviceless.available() is not None,
                                reason=f"no deviceless H100 compiler: {deviceless.available()}")

SMEM_PER_BLOCK = deviceless.H100_SXM_80GB.smem_per_block_optin_bytes
STAGE1 = PUBLISHED_STAGES[0]


def _abstract(stage, block: int, top_k: int):
    s = jax.ShapeDtypeStruct
    q = s((1, stage.tokens, stage.q_heads, stage.head_dim), jnp.bfloat16)
    kv = s((1, stage.tokens, stage.kv_heads, stage.head_dim), jnp.bfloat16)
    lse = s((1, stage.q_heads, stage.tokens), jnp.float32)
    idx = s((1, stage.kv_heads, stage.tokens // block, top_k), jnp.int32)
    return q, kv, lse, idx


def _selection_kernels(stage, block: int, top_k: int, config: SelectionConfig) -> dict[str, tuple]:
    """The three selection kernels at ``stage``'s shapes: name -> (fn, abstract args), each fn one launch."""
    q, kv, lse, idx = _abstract(stage, block, top_k)
    kw = dict(block_size=block, config=config)
    return {
        "forward": (lambda q, k, v, i: selection_forward(q, k, v, i, **kw), (q, kv, kv, idx)),
        "dq": (lambda q, k, v, do, l, de, i: selection_backward_dq(q, k, v, do, l, de, i, **kw),
               (q, kv, kv, q, lse, lse, idx)),
        "dk/dv": (lambda q, k, v, do, l, de, i: selection_backward_dkv(q, k, v, do, l, de, i, **kw),
                  (q, kv, kv, q, lse, lse, idx)),
    }


def _fused_forward_kernel(stage, config: SelectionConfig) -> tuple:
    """The fused forward kernel at ``stage``'s shapes (bf16 output): (fn, abstract args)."""
    bs = stage.sparse_block_size
    local_steps = stage.block_attn_size // bs
    q, kv, _, table = _abstract(stage, bs, local_steps + stage.top_k)
    gates = jax.ShapeDtypeStruct((1, stage.q_heads, 3, stage.tokens), jnp.float32)
    o_cmp = jax.ShapeDtypeStruct((1, stage.tokens // bs, stage.q_heads, stage.head_dim), jnp.float32)
    kw = dict(block_size=bs, local_steps=local_steps, out_dtype=jnp.bfloat16, config=config)
    return (lambda q, k, v, i, g, o: fused_kernel.fused_forward(q, k, v, i, g, o, **kw),
            (q, kv, kv, table, gates, o_cmp))


def _branches(stage):
    tile = local_tile_size(stage.block_attn_size)
    return {"selected": (stage.sparse_block_size, stage.top_k), "local": (tile, stage.block_attn_size // tile)}


@pytest.mark.parametrize("branch", ["selected", "local"])
def test_kernels_compile_for_sm90a_at_the_published_stage1_shape(branch):
    block, top_k = _branches(STAGE1)[branch]
    cfg = SelectionConfig(num_compute_wgs=2)
    threads = (cfg.num_compute_wgs + 1) * 128
    reports = {name: deviceless.compile_kernel(fn, *args)
               for name, (fn, args) in _selection_kernels(STAGE1, block, top_k, cfg).items()}
    for name, r in reports.items():
        assert 0 < r.smem_bytes <= SMEM_PER_BLOCK, (name, r.smem_bytes)
        assert r.registers * threads <= deviceless.H100_SXM_80GB.registers_per_sm, (name, r.registers)
        assert r.named_barriers <= 16, (name, r.named_barriers)
    # the forward and dq kernels keep every value in registers; dk/dv (two accumulators) may spill a little
    assert not reports["forward"].spills, reports["forward"].ptxas_log[-800:]
    assert not reports["dq"].spills, reports["dq"].ptxas_log[-800:]
    assert reports["dk/dv"].spill_store_bytes <= 64, reports["dk/dv"].ptxas_log[-800:]


def test_fused_forward_compiles_for_sm90a_without_spills():
    """The fused forward kernel at the stage-1 shape: two softmax states, three gates and the
    compressed row in registers, a bfloat16 output tile, still no spill, within the SMEM limit."""
    assert fused_kernel.can_fuse(STAGE1.block_attn_size, STAGE1.sparse_block_size)
    cfg = SelectionConfig(num_compute_wgs=2)
    fn, args = _fused_forward_kernel(STAGE1, cfg)
    r = deviceless.compile_kernel(fn, *args)
    assert 0 < r.smem_bytes <= SMEM_PER_BLOCK, r.smem_bytes
    assert r.registers * (cfg.num_compute_wgs + 1) * 128 <= deviceless.H100_SXM_80GB.registers_per_sm
    assert not r.spills, r.ptxas_log[-800:]


def _waits_while_qk_runs(ptx: str) -> bool:
    """Whether the first wgmma group (the QK^T of the kv loop) is committed, then a barrier is
    waited on, before the warpgroup waits for the group's result."""
    issued = ptx.index("wgmma.commit_group")
    return "mbarrier.try_wait" in ptx[issued:ptx.index("wgmma.wait_group", issued)]


def test_pingpong_forward_kernels_compile_for_sm90a_and_turn_while_qk_runs(monkeypatch):
    """SelectionConfig(pingpong=True) at the stage-1 shape: the forward and fused forward kernels
    compile without spills, and each warpgroup hands the tensor cores over between issuing its
    QK^T and waiting for it (in the PTX); without ping-pong it waits for QK^T straight away."""
    monkeypatch.setenv("MOSAIC_GPU_DUMP_PTX", "1")
    bs = STAGE1.sparse_block_size
    pingpong = SelectionConfig(pingpong=True)
    kernels = {"forward": _selection_kernels(STAGE1, bs, STAGE1.top_k, pingpong)["forward"],
               "fused forward": _fused_forward_kernel(STAGE1, pingpong)}
    reports = {name: deviceless.compile_kernel(fn, *args) for name, (fn, args) in kernels.items()}
    for name, r in reports.items():
        assert 0 < r.smem_bytes <= SMEM_PER_BLOCK, (name, r.smem_bytes)
        assert not r.spills, (name, r.ptxas_log[-800:])
        assert _waits_while_qk_runs(r.ptxas_log), name
    # the same kernel without ping-pong, at a shape no other test compiles (each is compiled once a process)
    plain_shape = AttentionShape("plain", 8192, 4, 1, 64, 1024, bs, 8)
    fn, args = _selection_kernels(plain_shape, bs, plain_shape.top_k, SelectionConfig())["forward"]
    plain = deviceless.compile_kernel(fn, *args)
    assert not _waits_while_qk_runs(plain.ptxas_log)


def _softmax_runs_under_its_own_wgmma(ptx: str) -> bool:
    """Whether the kv loop issues two wgmma groups (the next QK^T, then PV), waits for the first
    alone (``wait_group 1``), and takes exponentials before waiting for the second."""
    if "wgmma.wait_group.sync.aligned 1;" not in ptx:
        return False
    wait_one = ptx.index("wgmma.wait_group.sync.aligned 1;")
    issued = ptx[max(ptx.rfind("wgmma.wait_group", 0, wait_one), 0):wait_one]  # since the last wait, if any
    under = ptx[wait_one:ptx.index("wgmma.wait_group.sync.aligned 0;", wait_one)]
    return issued.count("wgmma.commit_group") == 2 and "ex2.approx" in under


def test_overlapped_kernels_compile_for_sm90a_with_the_softmax_under_the_wgmma(monkeypatch):
    """SelectionConfig(intra_warpgroup_overlap=True) at the stage-1 shape: the forward, dq and
    fused forward kernels compile (the forward and dq without spills; the fused one, which also
    carries the local branch's state through the selected loop, spills 48 B, outside both kv
    loops in its SASS: attention.md). In the PTX each forward kv step's softmax runs between
    the wait for its QK^T and the wait for the PV issued after it, and the dq kernel computes P
    between the waits for QK^T and for dP = dO V^T. The default kernel has no such step."""
    monkeypatch.setenv("MOSAIC_GPU_DUMP_PTX", "1")
    overlap = SelectionConfig(intra_warpgroup_overlap=True)
    selection = _selection_kernels(STAGE1, STAGE1.sparse_block_size, STAGE1.top_k, overlap)
    kernels = {"forward": selection["forward"], "dq": selection["dq"],
               "fused forward": _fused_forward_kernel(STAGE1, overlap)}
    reports = {name: deviceless.compile_kernel(fn, *args) for name, (fn, args) in kernels.items()}
    for name, r in reports.items():
        assert 0 < r.smem_bytes <= SMEM_PER_BLOCK, (name, r.smem_bytes)
        assert _softmax_runs_under_its_own_wgmma(r.ptxas_log), name
    assert not reports["forward"].spills, reports["forward"].ptxas_log[-800:]
    assert not reports["dq"].spills, reports["dq"].ptxas_log[-800:]
    assert reports["fused forward"].spill_store_bytes <= 64, reports["fused forward"].ptxas_log[-800:]
    plain_shape = AttentionShape("plain", 4096, 4, 1, 64, 1024, 128, 8)
    fn, args = _selection_kernels(plain_shape, 128, plain_shape.top_k, SelectionConfig())["forward"]
    assert not _softmax_runs_under_its_own_wgmma(deviceless.compile_kernel(fn, *args).ptxas_log)


def _ptx_exp_to_matmul_time(ptx: str) -> float:
    """exp2 against wgmma time of one compute warpgroup's code, at Hopper's per-SM rates: each
    ``ex2.approx`` is one per thread (128 per warpgroup); each wgmma does 2*m*n*k FLOPs."""
    exps = 128 * len(re.findall(r"\bex2\.approx", ptx))
    mnk = re.findall(r"wgmma\.mma_async\.sync\.aligned\.m(\d+)n(\d+)k(\d+)", ptx)
    matmul_flops = sum(2 * int(m) * int(n) * int(k) for m, n, k in mnk)
    return (exps / flops.SFU_EXP2_PER_CLOCK) / (matmul_flops / flops.TENSOR_FLOPS_PER_CLOCK)


@pytest.mark.parametrize("kernel, name", [("mosaic_selection_fwd", "forward"), ("mosaic_selection_bwd_dq", "dq"),
                                          ("mosaic_selection_bwd_dkv", "dk/dv")])
def test_compiled_kernels_take_the_exponentials_the_flop_model_counts(kernel, name, monkeypatch):
    """flops.exp_to_matmul_time assumes one exp2 per (query row, kv row) pair; the kernels' PTX has
    it: counted over the compiled code (one kv block per loop body; the forward adds 2 per thread
    for the running max's rescale)."""
    monkeypatch.setenv("MOSAIC_GPU_DUMP_PTX", "1")
    shape = AttentionShape("ptx", 4096, 4, 1, 64, 1024, 128, 8)  # shapes no other test compiles
    fn, args = _selection_kernels(shape, shape.sparse_block_size, shape.top_k,
                                  SelectionConfig(num_compute_wgs=1))[name]
    ptx = deviceless.compile_kernel(fn, *args).ptxas_log
    assert f".entry {kernel}_mosaic_gpu_kernel" in ptx, "no PTX in the compiler's log"
    assert _ptx_exp_to_matmul_time(ptx) == pytest.approx(flops.exp_to_matmul_time(kernel, shape.head_dim), rel=0.05)


@pytest.mark.parametrize("stage", PUBLISHED_STAGES, ids=lambda s: s.name)
def test_gated_mlp_kernel_compiles_for_sm90a_without_spills(stage):
    """The cSwiGLU up-projection kernel at each level's (tokens, dim, hidden = 4 dim) for 24
    members: two 64x128 float32 accumulators per compute warpgroup, no spill."""
    from pallas_kernels.gated_mlp import DEFAULT_CONFIG, gated_up_projection_forward

    dim = stage.q_heads * stage.head_dim
    hidden = 4 * dim
    s = jax.ShapeDtypeStruct
    r = deviceless.compile_kernel(gated_up_projection_forward, s((24, stage.tokens, dim), jnp.bfloat16),
                                  s((dim, 2 * hidden), jnp.bfloat16), s((24, hidden), jnp.float32))
    assert 0 < r.smem_bytes <= SMEM_PER_BLOCK, r.smem_bytes
    assert r.registers * (DEFAULT_CONFIG.num_compute_wgs + 1) * 128 <= deviceless.H100_SXM_80GB.registers_per_sm
    assert not r.spills, r.ptxas_log[-800:]


@pytest.mark.parametrize("stage", PUBLISHED_STAGES, ids=lambda s: s.name)
def test_gate_backward_kernel_compiles_for_sm90a_without_spills(stage):
    """The cSwiGLU gate's backward at each level's (tokens, hidden = 4 dim) for 12 sequences
    (6 initial conditions x 2 members): no spill, and three CTAs fit an SM's registers."""
    from pallas_kernels.gated_mlp import gate_backward

    hidden = 4 * stage.q_heads * stage.head_dim
    act = jax.ShapeDtypeStruct((12, stage.tokens, hidden), jnp.bfloat16)
    r = deviceless.compile_kernel(lambda a, b, dh, bias: gate_backward(a, b, dh, bias)[:3], act, act, act,
                                  jax.ShapeDtypeStruct((12, hidden), jnp.float32))
    assert 0 < r.smem_bytes <= SMEM_PER_BLOCK, r.smem_bytes
    assert 3 * r.registers * 128 <= deviceless.H100_SXM_80GB.registers_per_sm, r.registers
    assert not r.spills, r.ptxas_log[-800:]


def test_cswiglu_kernel_backward_needs_less_memory_than_autodiff():
    """Compiled for the H100 inside a remat'd gradient, the kernel's backward (h, da, db written
    over a, b, dh) holds at least two (tokens, hidden) activations less than autodiff's form.
    With three fresh outputs it held slightly more (and the paper-era5 step 7 GiB more at
    batch 6)."""
    from mosaic_jax.cswiglu import GateKernels, cswiglu, cswiglu_reference
    from pallas_kernels.gated_mlp import gate_backward

    sharding = jax.sharding.SingleDeviceSharding(deviceless.compile_only_devices(1)[0])
    b, n, d, h = 4, 8192, 256, 1024
    s = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=sharding)  # noqa: E731
    args = (s(b, n, d), s(d, 2 * h), s(h, d), s(b, h), s(b, n, d))

    def temp_bytes(ffn) -> int:
        def loss(x, w13, w2, bias, cot):
            return jnp.sum((jax.checkpoint(ffn)(x, w13, w2, bias) * cot).astype(jnp.float32))
        grad = jax.jit(jax.grad(loss, (0, 1, 2, 3))).lower(*args).compile()
        return grad.memory_analysis().temp_size_in_bytes

    kernel = temp_bytes(lambda x, w13, w2, bias: cswiglu(x, w13, w2, bias, GateKernels(gate_backward)))
    autodiff = temp_bytes(cswiglu_reference)
    activation = b * n * h * 2
    assert kernel + 2 * activation <= autodiff, (kernel / 2**20, autodiff / 2**20)  # 195 vs 385 MiB


def test_cswiglu_up_projection_kernel_runs_once_in_a_remat_gradient():
    """With the gated up-projection kernel, compiled for the H100 inside a remat'd gradient: the
    custom VJP's forward rule runs in the forward pass and again in remat's recomputation, which
    needs only its inputs, so the kernel must be dead there. One launch of each kernel, and
    XLA's matrix work is the plain form's less exactly one up-product (x @ w13): the forward's,
    now in the kernel; the backward still computes its own."""
    from mosaic_jax import roofline
    from mosaic_jax.cswiglu import GateKernels, cswiglu
    from pallas_kernels.gated_mlp import gate_backward, gated_up_projection

    sharding = jax.sharding.SingleDeviceSharding(deviceless.compile_only_devices(1)[0])
    b, n, d, h = 2, 1024, 256, 512
    s = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=sharding)  # noqa: E731
    args = (s(b, n, d), s(d, 2 * h), s(h, d), s(b, h))

    def optimized_hlo(kernels: GateKernels) -> str:
        def loss(x, w13, w2, bias):  # nonlinear in the output, so the forward's value is needed
            ffn = jax.checkpoint(lambda *a: cswiglu(*a, kernels))
            return jnp.sum(jnp.square(ffn(x, w13, w2, bias).astype(jnp.float32)))
        return jax.jit(jax.grad(loss, (0, 1, 2, 3))).lower(*args).compile().as_text()

    def launches(hlo: str, kernel: str) -> int:
        return sum(1 for line in hlo.splitlines() if "custom_call_target=" in line and f"/{kernel}" in line)

    def xla_matmul_flops(hlo: str) -> float:
        return sum(c.count * c.flops for c in roofline.op_costs(hlo) if c.category == "matmul")

    fused = optimized_hlo(GateKernels(gate_backward, gated_up_projection))
    plain = optimized_hlo(GateKernels(gate_backward))
    assert launches(fused, "mosaic_gated_up_projection") == 1
    assert launches(plain, "mosaic_gated_up_projection") == 0
    assert launches(fused, "mosaic_gate_backward") == launches(plain, "mosaic_gate_backward") == 1
    assert xla_matmul_flops(plain) - xla_matmul_flops(fused) == 2 * b * n * d * 2 * h


def test_whole_attention_gradient_compiles_and_its_memory_is_linear_in_the_inputs():
    """Forward + backward of the kernel path: device memory within a small multiple of its inputs
    and gradients (no (tokens x selected tokens) intermediate), unlike the xla path.

    At the stage-2 shape: the stage-1 kernels are compiled by the test above, and a kernel is
    compiled once per process (see ``deviceless.compile_kernel``)."""
    stage = PUBLISHED_STAGES[1]
    device = deviceless.compile_only_devices(1)[0]
    sh = jax.sharding.SingleDeviceSharding(device)
    q = jax.ShapeDtypeStruct((1, stage.tokens, stage.q_heads, stage.head_dim), jnp.bfloat16, sharding=sh)
    kv = jax.ShapeDtypeStruct((1, stage.tokens, stage.kv_heads, stage.head_dim), jnp.bfloat16, sharding=sh)
    gates = jax.ShapeDtypeStruct((1, stage.tokens, stage.q_heads, 3), jnp.float32, sharding=sh)
    io_bytes = 2 * sum(a.size * a.dtype.itemsize for a in (q, kv, kv, gates))  # inputs + their gradients

    def memory(impl: str) -> int:
        def loss(q, k, v, g):
            return mosaic_attention(q, k, v, g, block_attn_size=stage.block_attn_size,
                                    sparse_block_size=stage.sparse_block_size, top_k=stage.top_k, impl=impl).sum()

        compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).trace(q, kv, kv, gates).lower().compile()
        return CompiledMemory.of(compiled).total

    pallas = memory("pallas")
    assert pallas <= 4 * io_bytes, (pallas, io_bytes)
    assert memory("xla") > 4 * pallas


def test_target_config_is_the_device_the_compiler_sees():
    (device,) = deviceless.compile_only_devices(1)
    assert device.device_kind == deviceless.H100_SXM_80GB.name
    assert device.platform == "gpu"


def _kernel_operand_batches(hlo: str) -> set[int]:
    """Leading dims of the 16-bit operands of every Mosaic GPU kernel call in compiled HLO."""
    calls = [line for line in hlo.splitlines() if 'custom_call_target="mosaic_gpu_v2"' in line]
    assert calls, "no Mosaic GPU kernel in the program"
    constraints = [line.split("operand_layout_constraints={", 1)[1] for line in calls]
    return {int(m) for c in constraints for m in re.findall(r"(?:bf16|f16)\[(\d+),", c)}


def test_under_a_sharded_jit_each_device_runs_the_kernels_on_its_own_sequences():
    """8 H100s, batch 8 split over them: with ``batch_sharding`` each kernel sees 1 sequence and
    no all-gather is needed; without it, XLA gathers the batch to every device (the control)."""
    stage = PUBLISHED_STAGES[2]
    devices = deviceless.compile_only_devices(8)
    mesh = Mesh(np.asarray(devices), ("data",))
    sh = NamedSharding(mesh, P("data"))
    q = jax.ShapeDtypeStruct((8, stage.tokens, stage.q_heads, stage.head_dim), jnp.bfloat16, sharding=sh)
    kv = jax.ShapeDtypeStruct((8, stage.tokens, stage.kv_heads, stage.head_dim), jnp.bfloat16, sharding=sh)
    gates = jax.ShapeDtypeStruct((8, stage.tokens, stage.q_heads, 3), jnp.float32, sharding=sh)

    def compiled_hlo(batch_sharding):
        def loss(q, k, v, g):
            return mosaic_attention(q, k, v, g, block_attn_size=stage.block_attn_size,
                                    sparse_block_size=stage.sparse_block_size, top_k=stage.top_k, impl="pallas",
                                    batch_sharding=batch_sharding).sum()

        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)), out_shardings=(sh, sh, sh, sh))
        return grad.trace(q, kv, kv, gates).lower().compile().as_text()

    per_device = compiled_hlo(BatchSharding(mesh, ("data",)))
    assert _kernel_operand_batches(per_device) == {1}
    assert "all-gather" not in per_device
    assert _kernel_operand_batches(compiled_hlo(None)) == {8}
