"""What compiling for an H100 tells without one: kernel resources, and whether steps fit in memory.

Everything here is compiled for an H100 SXM 80 GB (sm_90a) by the CUDA PJRT plugin on a
machine that need not have a GPU (``mosaic_jax/deviceless.py``). Nothing is executed, so there
are no timings: those come from ``bench_attention.py``, ``bench_train.py`` and
``bench_forecast.py`` on the device.

    # each Mosaic GPU kernel at the published shapes: registers, spills, SMEM  -> attention.md
    python experiments/h100_compile.py kernels
    # a hash of each kernel's lowered Mosaic GPU module: equal before and after a refactor = same GPU code
    python experiments/h100_compile.py fingerprint
    # paper-era5 train step (2 members, bf16, remat): device memory per batch size -> train.md
    python experiments/h100_compile.py train --batch-sizes 1 2 4 8 16 --attention-impl pallas
    # ensemble forecast step: device memory per member chunk -> forecast.md
    python experiments/h100_compile.py forecast --preset paper-era5 --member-chunks 1 8 24
    # roofline: the lower bound on a step's time and what sets it -> forecast.md / train.md
    python experiments/h100_compile.py roofline --program forecast --members 24
    python experiments/h100_compile.py roofline --program train --batch 6

"Fits" compares XLA's buffer assignment (arguments + outputs + temporaries - aliased, per
device) with the memory a JAX process gets by default: ``XLA_PYTHON_CLIENT_MEM_FRACTION``
(0.75) of the device's 79.6 GiB. XLA's own workspace and the CUDA context come on top.
Without a device XLA also lacks CUB's scratch-size tables and compiles sorts (the selection's
inverse table) with its fallback algorithm, so a program's memory on the device may differ a
little from what is reported here.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "experiments"))

from common import NOT_OVERLAPPED, append_result  # noqa: E402

from mosaic_jax import deviceless  # noqa: E402
from mosaic_jax.training.metrics import CompiledMemory  # noqa: E402

GIB = 2.0**30
TARGET = deviceless.H100_SXM_80GB


def _device_line(n: int = 1) -> str:
    return (f"{n} x {TARGET.name} (sm_90a), compiled without a GPU by jax-cuda13-pjrt {jax.__version__}'s "
            f"deviceless AOT path on {jax.devices()[0].platform}; nothing executed")


def _error(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"


def memory_row(compile_fn: Callable[[], Any], **keys: Any) -> dict:
    """Compile (``compile_fn``); ``keys`` plus compile seconds and device memory in GiB, or the error."""
    t0 = time.perf_counter()
    try:
        compiled = compile_fn()
    except Exception as e:  # noqa: BLE001 - a program that does not compile is a result here
        row = {**keys, "error": _error(e)}
    else:
        m = CompiledMemory.of(compiled)
        row = {**keys, "compile_s": time.perf_counter() - t0, "bytes": m.total, "total": m.total / GIB,
               "args": m.argument / GIB, "temp": m.temp / GIB}
    print(row, flush=True)
    return row


def memory_cells(row: dict) -> str:
    """The table cells ``compile s | device memory GiB | of which arguments | temporaries``."""
    if "error" in row:
        return f"- | does not compile: {row['error']} | | "
    return f"{row['compile_s']:.0f} | {row['total']:.2f} | {row['args']:.2f} | {row['temp']:.2f}"


MEMORY_HEADER = "compile s | device memory GiB | of which arguments | temporaries"


# ----------------------------------------------------------------------------- kernels
@dataclasses.dataclass(frozen=True)
class KernelCase:
    """One Mosaic GPU kernel at one stage's shapes: ``fn(*args)`` launches exactly it."""

    stage: str
    branch: str
    kernel: str
    wgs: int
    fn: Callable
    args: tuple

    @property
    def label(self) -> str:
        return f"{self.stage} | {self.branch} | {self.kernel} | wgs {self.wgs}"


def kernel_cases(stages, wgs_options) -> list[KernelCase]:
    """Every kernel (selected and local branch; forward, dq, dk/dv; fused forward) at each stage shape."""
    from pallas_kernels.mosaic_attention import fused_kernel
    from pallas_kernels.mosaic_attention.config import SelectionConfig, local_tile_size
    from pallas_kernels.mosaic_attention.selection_kernel import (
        selection_backward_dkv,
        selection_backward_dq,
        selection_forward,
    )

    cases = []
    s = jax.ShapeDtypeStruct
    for stage in stages:
        q = s((1, stage.tokens, stage.q_heads, stage.head_dim), jnp.bfloat16)
        kv = s((1, stage.tokens, stage.kv_heads, stage.head_dim), jnp.bfloat16)
        lse = s((1, stage.q_heads, stage.tokens), jnp.float32)
        tile = local_tile_size(stage.block_attn_size)
        branches = [("selected", stage.sparse_block_size, stage.top_k),
                    ("local", tile, stage.block_attn_size // tile)]
        for branch, block, top_k in branches:
            idx = s((1, stage.kv_heads, stage.tokens // block, top_k), jnp.int32)
            for wgs in wgs_options:
                cfg = SelectionConfig(num_compute_wgs=wgs)
                # the forward kernels also on the other softmax schedules: the two compute warpgroups taking
                # turns on the tensor cores, and each warpgroup's softmax under its own next wgmma (which
                # also puts the dq kernel's exponentials under its dP wgmma)
                overlap = (", overlap", SelectionConfig(num_compute_wgs=wgs, intra_warpgroup_overlap=True))
                forward_variants = [("", cfg)] + ([(", ping-pong", SelectionConfig(num_compute_wgs=wgs, pingpong=True))]
                                                  if wgs == 2 else []) + [overlap]
                kernels = [(f"forward{suffix}", lambda q, k, v, i, b=block, c=c: selection_forward(
                    q, k, v, i, block_size=b, config=c), (q, kv, kv, idx)) for suffix, c in forward_variants]
                kernels += [(f"dq{suffix}", lambda q, k, v, do, l, de, i, b=block, c=c: selection_backward_dq(
                    q, k, v, do, l, de, i, block_size=b, config=c), (q, kv, kv, q, lse, lse, idx))
                    for suffix, c in [("", cfg), overlap]]
                kernels += [
                    ("dk/dv", lambda q, k, v, do, l, de, i, b=block, c=cfg: selection_backward_dkv(
                        q, k, v, do, l, de, i, block_size=b, config=c), (q, kv, kv, q, lse, lse, idx)),
                ]
                if branch == "selected" and fused_kernel.can_fuse(stage.block_attn_size, block):
                    local_steps = stage.block_attn_size // block
                    table = s((1, stage.kv_heads, stage.tokens // block, local_steps + top_k), jnp.int32)
                    gates = s((1, stage.q_heads, 3, stage.tokens), jnp.float32)
                    o_cmp = s((1, stage.tokens // block, stage.q_heads, stage.head_dim), jnp.float32)
                    for suffix, c in forward_variants:
                        kernels.append((f"fused forward{suffix}", lambda q, k, v, i, g, o, b=block, c=c, ls=local_steps:
                                        fused_kernel.fused_forward(q, k, v, i, g, o, block_size=b, local_steps=ls,
                                                                   out_dtype=q.dtype, config=c),
                                        (q, kv, kv, table, gates, o_cmp)))
                for name, fn, args in kernels:
                    label = "local+selected" if name.startswith("fused") else branch
                    cases.append(KernelCase(stage.name, label, name, wgs, fn, args))
    return cases


def gated_mlp_cases(stages) -> list[KernelCase]:
    """The cSwiGLU kernels at each stage's width (hidden = 4 dim): the gated up-projection for 24
    forecast members, the gate's backward for 12 training sequences (6 initial conditions x 2)."""
    from pallas_kernels.gated_mlp import DEFAULT_CONFIG, gate_backward, gated_up_projection_forward

    s = jax.ShapeDtypeStruct
    cases = []
    for stage in stages:
        dim = stage.q_heads * stage.head_dim
        hidden = 4 * dim
        act = s((12, stage.tokens, hidden), jnp.bfloat16)
        cases += [
            KernelCase(stage.name, "cSwiGLU", "up-projection", DEFAULT_CONFIG.num_compute_wgs,
                       gated_up_projection_forward, (s((24, stage.tokens, dim), jnp.bfloat16),
                                                     s((dim, 2 * hidden), jnp.bfloat16), s((24, hidden), jnp.float32))),
            KernelCase(stage.name, "cSwiGLU", "gate backward", 1, gate_backward,
                       (act, act, act, s((12, hidden), jnp.float32))),
        ]
    return cases


def kernel_rows(stages, wgs_options) -> list[dict]:
    """Compile every kernel of ``kernel_cases``: registers, spills, SMEM, named barriers."""
    rows = []
    for case in kernel_cases(stages, wgs_options):
        keys = {"stage": case.stage, "branch": case.branch, "kernel": case.kernel, "wgs": case.wgs}
        t0 = time.perf_counter()
        try:
            r = deviceless.compile_kernel(case.fn, *case.args, target=TARGET)
            row = {**keys, "registers": r.registers, "spill": f"{r.spill_store_bytes} / {r.spill_load_bytes}",
                   "smem_kib": r.smem_bytes / 1024, "barriers": r.named_barriers,
                   "compile_s": time.perf_counter() - t0}
        except Exception as e:  # noqa: BLE001 - a kernel that does not compile is a result
            row = {**keys, "error": _error(e)}
        print(row, flush=True)
        rows.append(row)
    return rows


def attention_memory_rows(stages) -> list[dict]:
    """Device memory of the whole Mosaic attention forward+backward, pallas vs xla, per stage."""
    from mosaic_jax.attention.api import mosaic_attention

    device = deviceless.compile_only_devices(1, TARGET)[0]
    sh = jax.sharding.SingleDeviceSharding(device)
    rows = []
    for stage in stages:
        s = lambda shape, dt=jnp.bfloat16: jax.ShapeDtypeStruct(shape, dt, sharding=sh)  # noqa: E731
        q = s((1, stage.tokens, stage.q_heads, stage.head_dim))
        kv = s((1, stage.tokens, stage.kv_heads, stage.head_dim))
        gates = s((1, stage.tokens, stage.q_heads, 3), jnp.float32)
        for impl in ("pallas", "xla"):
            def loss(q, k, v, g, impl=impl):
                return mosaic_attention(q, k, v, g, block_attn_size=stage.block_attn_size,
                                        sparse_block_size=stage.sparse_block_size, top_k=stage.top_k,
                                        impl=impl).sum()

            rows.append(memory_row(
                lambda loss=loss: jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).trace(q, kv, kv, gates).lower().compile(),
                stage=stage.name, impl=impl))
    return rows


def cmd_kernels(args: argparse.Namespace) -> None:
    from pallas_kernels.mosaic_attention.config import PUBLISHED_STAGES

    rows = kernel_rows(PUBLISHED_STAGES, args.wgs)
    mem = attention_memory_rows(PUBLISHED_STAGES)
    lines = ["| stage | branch | kernel | compute warpgroups | registers / thread | spill stores / loads (B) | "
             "SMEM KiB (of 227) | named barriers |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['stage']} | {r['branch']} | {r['kernel']} | {r['wgs']} | does not compile: "
                         f"{r['error']} | | | |")
        else:
            lines.append(f"| {r['stage']} | {r['branch']} | {r['kernel']} | {r['wgs']} | {r['registers']} | "
                         f"{r['spill']} | {r['smem_kib']:.1f} | {r['barriers']} |")
    lines += ["", "Whole Mosaic attention, forward + backward (grads of q, k, v, gates), batch 1:", "",
              f"| stage | impl | {MEMORY_HEADER} |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['impl']} | {memory_cells(r)} |" for r in mem]
    body = ("Each Mosaic GPU kernel compiled for sm_90a at the published shapes (bf16, batch 1) by the plugin's "
            "Mosaic GPU compiler: registers and spills from `ptxas -v` (CUDA 13 toolkit), SMEM from the kernel's "
            "scratch allocation. Registers are the function's launch bound (65,536 / threads per CTA, capped "
            "at 168 for 3 warpgroups, 255 for 2); `setmaxnreg` then moves registers between the memory and "
            "compute warpgroups. Nothing here ran: no timing.\n\n" + "\n".join(lines))
    print(body)
    if not args.no_record:
        print("->", append_result("attention", "Kernels compiled for the H100 without a GPU", body,
                                  device=_device_line()))


def cmd_fingerprint(args: argparse.Namespace) -> None:
    """A hash of each kernel's Mosaic GPU module (lowered, not compiled; no source locations).

    Run before and after changing a kernel's Python: where every hash is equal, the GPU code is
    unchanged, which a machine without a GPU can show. Records nothing.
    """
    from pallas_kernels.mosaic_attention.config import PUBLISHED_STAGES

    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
    for case in kernel_cases(PUBLISHED_STAGES, args.wgs) + gated_mlp_cases(PUBLISHED_STAGES):
        for text in deviceless.kernel_modules(case.fn, *case.args, target=TARGET):
            module = re.search(r"module @(\w+)", text).group(1)
            print(f"{hashlib.sha256(text.encode()).hexdigest()[:16]}  {case.label} | {module}", flush=True)
            if args.save:
                name = re.sub(r"[^a-z0-9]+", "-", f"{case.label} {module}".lower()).strip("-")
                (args.save / f"{name}.mlir").write_text(text)


# ----------------------------------------------------------------------------- train step
def cmd_train(args: argparse.Namespace) -> None:
    from mosaic_jax.config import count_from_shapes, get_config
    from mosaic_jax.model import param_shapes
    from mosaic_jax.training import TrainConfig, make_mesh
    from mosaic_jax.training import sharding as shd
    from mosaic_jax.training.train_step import lower_train_step, train_step_compiler_options

    cfg = get_config(args.preset)
    devices = deviceless.compile_only_devices(args.devices, TARGET)
    budget = TARGET.usable_bytes(args.mem_fraction)
    rows = []
    for impl in args.attention_impl:
        for b in args.batch_sizes:
            tc = TrainConfig(batch_size=b, ensemble_members=2, compute_dtype=args.dtype, remat=not args.no_remat,
                             attention_impl=impl, mesh_fsdp=args.fsdp, total_steps=1000, warmup_steps=10,
                             overlap_collectives=not args.no_overlap_collectives)
            mesh = make_mesh(-1, 1, args.fsdp, devices=devices)
            if b % shd.mesh_size(mesh, "batch"):
                continue
            row = memory_row(lambda: lower_train_step(cfg, tc, mesh).compile(train_step_compiler_options(tc)),
                             impl=impl, batch=b)
            row["fits"] = "bytes" in row and row["bytes"] <= budget
            rows.append(row)
            if "bytes" in row and not row["fits"]:
                break
    n_params = count_from_shapes(param_shapes(cfg))
    lines = [f"| attention | batch (ICs) | {MEMORY_HEADER} | fits |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['impl']} | {r['batch']} | {memory_cells(r)} | {'yes' if r['fits'] else 'no'} |" for r in rows]
    largest = {impl: max([r["batch"] for r in rows if r["impl"] == impl and r.get("fits")], default=None)
               for impl in args.attention_impl}
    body = (f"`{args.preset}` train step ({n_params:,} parameters; AdamW with float32 master weights, "
            f"{args.dtype} compute, 2 members per initial condition, "
            f"{'no remat' if args.no_remat else 'per-block remat'}) compiled for {args.devices} H100(s), mesh "
            f"fsdp={args.fsdp}{NOT_OVERLAPPED if args.no_overlap_collectives else ''}. "
            f"Device memory is XLA's buffer assignment per device; 'fits' compares it with "
            f"{budget / GIB:.1f} GiB (memory fraction {args.mem_fraction or 0.75:.2f} of {TARGET.memory_bytes / GIB:.1f} "
            f"GiB). Largest batch that fits: "
            + ", ".join(f"{k}: {v}" for k, v in largest.items()) + ". Throughput and MFU need the device "
            "(`bench_train.py throughput`).\n\n" + "\n".join(lines))
    print(body)
    if not args.no_record:
        print("->", append_result("train", f"{args.preset} train step compiled for the H100 without a GPU", body,
                                  device=_device_line(args.devices)))


# ----------------------------------------------------------------------------- forecast
def _forecast_step(preset: str, dtype: str, attention_impl: str, devices: int):
    """``compile(chunk)``: the jitted ``EnsembleSampler.step`` that ``mosaic-jax forecast`` runs, for a
    chunk of members split over ``devices`` compile-only H100s, parameters replicated; and the config."""
    from mosaic_jax.attention import BatchSharding
    from mosaic_jax.config import get_config
    from mosaic_jax.model import init_params
    from mosaic_jax.sampler import EnsembleSampler

    cfg = get_config(preset)
    mesh = jax.sharding.Mesh(np.asarray(deviceless.compile_only_devices(devices, TARGET)), ("member",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    members = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("member"))
    sampler = EnsembleSampler(cfg, dtype=jnp.dtype(dtype), attention_impl=attention_impl,
                              batch_sharding=BatchSharding(mesh, ("member",)))
    params = jax.eval_shape(lambda k: init_params(cfg, k), jax.random.key(0))
    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), params)
    grid = (cfg.n_lon, cfg.n_lat, cfg.num_channels)

    def compile_step(chunk: int):
        s = lambda shape, dt=jnp.float32, sh=members: jax.ShapeDtypeStruct(shape, dt, sharding=sh)  # noqa: E731
        abstract = (params, s((chunk, cfg.num_history_steps, *grid)), s((chunk, 2)),
                    s((cfg.n_lon, cfg.n_lat, cfg.num_static), sh=replicated), s((chunk,), jax.random.key(0).dtype),
                    s((), jnp.int32, sh=replicated))
        return jax.jit(sampler.step, donate_argnums=(1, 2)).trace(*abstract).lower().compile()

    return compile_step, cfg


def cmd_forecast(args: argparse.Namespace) -> None:
    compile_step, _ = _forecast_step(args.preset, args.dtype, args.attention_impl, args.devices)
    rows = [memory_row(lambda chunk=chunk: compile_step(chunk), chunk=chunk)
            for chunk in args.member_chunks if chunk % args.devices == 0]
    lines = [f"| members per pass (all devices) | {MEMORY_HEADER} |", "|---|---|---|---|---|"]
    lines += [f"| {r['chunk']} | {memory_cells(r)} |" for r in rows]
    body = (f"One forecast step of `{args.preset}` (the jitted `EnsembleSampler.step` that `mosaic-jax forecast` runs; "
            f"{args.dtype} compute, attention `{args.attention_impl}`, float32 parameters) compiled for "
            f"{args.devices} H100(s), members split over them. "
            f"Device memory (per device) is XLA's buffer assignment: parameters, history window, "
            f"noise and temporaries; each step's output streams to host, so it does not grow with the number of "
            f"steps. The published release states ~9 GB for one member. Timings need the device "
            f"(`bench_forecast.py`).\n\n" + "\n".join(lines))
    print(body)
    if not args.no_record:
        print("->", append_result("forecast", f"{args.preset} forecast step compiled for the H100 without a GPU",
                                  body, device=_device_line(args.devices)))


# ----------------------------------------------------------------------------- roofline
# Dense bf16 tensor-core peak and HBM bandwidth (NVIDIA datasheets, SXM parts).
ROOFLINE_DEVICES = {"H100 SXM": (989.4e12, 3.35e12), "H200 SXM": (989.4e12, 4.8e12)}


def _pallas_kernel_flops(ins, operand_shapes: list[str]) -> float:
    """A Pallas custom call's FLOPs: its kernel's name is in the op_name path, its sizes in its operands."""
    from mosaic_jax import roofline
    from pallas_kernels import gated_mlp
    from pallas_kernels.mosaic_attention.flops import KERNEL_MATMULS, kernel_launch_flops

    dims = [roofline.shape_dims(s)[0][1] for s in operand_shapes]
    if "/mosaic_gated_up_projection/" in ins.op_name:
        return gated_mlp.launch_flops(dims)
    if "/mosaic_gate_backward/" in ins.op_name:
        return 0.0  # elementwise: no matrix work
    kernel = next((k for k in KERNEL_MATMULS if f"/{k}/" in ins.op_name), None)
    if kernel is None:
        raise ValueError(f"custom call {ins.name} ({ins.op_name}) is not one of this project's Pallas kernels")
    return kernel_launch_flops(kernel, dims)


def _roofline_program(args: argparse.Namespace):
    """The compiled program, its unit ("member-step" or "initial condition"), how many units one
    run does, its model FLOPs (jaxpr count, no recomputation) and a description."""
    from mosaic_jax.config import get_config

    impl = args.attention_impl or ("pallas-fused" if args.program == "forecast" else "pallas")
    if args.program == "forecast":
        from mosaic_jax.sampler import member_step_flops

        compile_step, cfg = _forecast_step(args.preset, args.dtype, impl, 1)
        return (compile_step(args.members), "member-step", args.members, args.members * member_step_flops(cfg),
                f"one forecast step of `{args.preset}` for {args.members} members (the jitted `EnsembleSampler.step`; "
                f"{args.dtype} compute, attention `{impl}`)")
    from mosaic_jax.training import TrainConfig, make_mesh
    from mosaic_jax.training.train_step import lower_train_step, train_step_compiler_options, train_step_flops

    cfg = get_config(args.preset)
    tc = TrainConfig(batch_size=args.batch, ensemble_members=2, compute_dtype=args.dtype, remat=True,
                     attention_impl=impl, total_steps=1000, warmup_steps=10)
    mesh = make_mesh(-1, 1, 1, devices=deviceless.compile_only_devices(1, TARGET))
    model_flops = train_step_flops(cfg, dataclasses.replace(tc, remat=False))
    compiled = lower_train_step(cfg, tc, mesh).compile(train_step_compiler_options(tc))
    return (compiled, "initial condition", args.batch, model_flops,
            f"one train step of `{args.preset}` at batch {args.batch} (2 members per initial condition, "
            f"{args.dtype} compute, per-block remat, AdamW; attention `{impl}`)")


def cmd_roofline(args: argparse.Namespace) -> None:
    from mosaic_jax import roofline

    t0 = time.perf_counter()
    compiled, unit, units, model_flops, what = _roofline_program(args)
    compile_s = time.perf_counter() - t0
    hlo = compiled.as_text()
    if args.save_hlo:
        args.save_hlo.write_text(hlo)
    costs = roofline.op_costs(hlo, _pallas_kernel_flops)
    names = list(ROOFLINE_DEVICES)
    peak = ROOFLINE_DEVICES[names[0]][0]
    per_unit = 1e3 / units  # seconds per run -> ms per unit
    totals = {d: roofline.summarize(costs, *ROOFLINE_DEVICES[d]) for d in names}
    labels = {"matmul": "matrix fusions (XLA)", "custom-call": "Pallas kernels",
              "memory": "memory-bound fusions (norms, activations, casts, gathers)", "collective": "collectives",
              "total": "**all**"}
    table = [f"| kernels | launches | TFLOP | GB moved | {' | '.join(f'{d}: ms per {unit}' for d in names)} "
             f"| {names[0]}: of which memory-bound |", "|---|---|---|---|" + "---|" * (len(names) + 1)]
    for cat in ("matmul", "custom-call", "memory", "collective", "total"):
        if cat not in totals[names[0]]:
            continue
        t = totals[names[0]][cat]
        cells = " | ".join(f"{totals[d][cat].seconds * per_unit:.2f}" for d in names)
        table.append(f"| {labels[cat]} | {t.ops} | {t.flops / 1e12:.1f} | {t.bytes / 1e9:.1f} | {cells} "
                     f"| {t.memory_bound_seconds * per_unit:.2f} |")
    by_path: dict[tuple[str, str], list[float]] = {}
    for c in costs:
        key = (roofline.module_path(c.op_name, args.path_depth), c.category)
        acc = by_path.setdefault(key, [0.0, 0.0])
        acc[0] += c.seconds(*ROOFLINE_DEVICES[names[0]])
        acc[1] += c.count * c.bytes
    top = sorted(by_path.items(), key=lambda kv: -kv[1][0])[: args.top]
    paths = [f"| model path (blocks grouped) | kernels | {names[0]}: ms per {unit} | GB moved per {unit} |",
             "|---|---|---|---|"]
    paths += [f"| `{p}` | {cat} | {sec * per_unit:.3f} | {nbytes / 1e9 / units:.2f} |"
              for (p, cat), (sec, nbytes) in top]
    hlo_flops = totals[names[0]]["total"].flops
    bound = {d: totals[d]["total"].seconds / units for d in names}
    if args.program == "forecast":
        consequence = (f"; a {args.forecast_members}-member {args.steps}-step forecast therefore takes at least "
                       + ", ".join(f"{d} {bound[d] * args.steps * args.forecast_members:.2f} s" for d in names) + ".")
        flops_note = "equal to the compiled program's: nothing is recomputed in a forecast"
    else:
        ceiling = {d: model_flops / units / (bound[d] * peak) for d in names}
        consequence = (". Run at the roofline, the step's MFU would be "
                       + ", ".join(f"{d} {ceiling[d]:.0%}" for d in names)
                       + ": the ceiling no implementation of this program passes (MFU counts model FLOPs; "
                       "recomputation and memory-bound work are the gap).")
        flops_note = ("the compiled program's exceed them by per-block remat's recomputation and the attention "
                      "backward kernels' recomputed scores")
    body = (
        f"Roofline of {what}, compiled for the H100 without a GPU in {compile_s:.0f} s (`mosaic_jax/roofline.py`). "
        f"Each kernel XLA launches is charged max(matrix FLOPs / peak, bytes / bandwidth); the sum is a lower bound "
        f"on the program's time that no schedule can beat. Peaks: dense bf16 {peak / 1e12:.0f} TFLOP/s; HBM "
        + ", ".join(f"{d} {ROOFLINE_DEVICES[d][1] / 1e12:.2f} TB/s" for d in names)
        + f". Matrix FLOPs in the compiled program (XLA fusions plus the Pallas kernels' own count): "
        f"{hlo_flops / 1e12:.1f} TFLOP; the model's, counted from its jaxpr: {model_flops / 1e12:.1f} TFLOP "
        f"(ratio {hlo_flops / model_flops:.3f}; {flops_note}).\n\n"
        + "\n".join(table)
        + f"\n\nLower bound per {unit}: "
        + ", ".join(f"{d} {bound[d] * 1e3:.1f} ms" for d in names)
        + consequence
        + f" Where the time goes, by the model path in the ops' metadata (top {args.top}, {names[0]}):\n\n"
        + "\n".join(paths))
    print(body)
    if not args.no_record:
        result = "forecast" if args.program == "forecast" else "train"
        print("->", append_result(result, f"{args.preset} {args.program} step: roofline from the H100 compile",
                                  body, device=_device_line(1)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-record", action="store_true", help="print only; do not append to experiments/results")
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("kernels", help="every Mosaic GPU kernel at the published shapes")
    k.add_argument("--wgs", type=int, nargs="+", default=[2, 1], help="compute warpgroups per CTA to compile")
    fp = sub.add_parser("fingerprint", help="a hash of every kernel's lowered module: is a kernel change a no-op?")
    fp.add_argument("--wgs", type=int, nargs="+", default=[2, 1], help="compute warpgroups per CTA to lower")
    fp.add_argument("--save", type=Path, default=None, help="also write each module's text here, to diff")
    t = sub.add_parser("train", help="train-step device memory per batch size")
    t.add_argument("--preset", default="paper-era5")
    t.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    t.add_argument("--attention-impl", nargs="+", default=["pallas"], choices=["pallas", "pallas-fused", "xla"])
    t.add_argument("--dtype", default="bfloat16")
    t.add_argument("--no-remat", action="store_true")
    t.add_argument("--devices", type=int, default=1, help="compile-only H100s on the mesh")
    t.add_argument("--fsdp", type=int, default=1)
    t.add_argument("--mem-fraction", type=float, default=None, help="XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.75)")
    t.add_argument("--no-overlap-collectives", action="store_true",
                   help="TrainConfig.overlap_collectives=False: XLA's latency-hiding scheduler off")
    f = sub.add_parser("forecast", help="forecast-step device memory per member chunk")
    f.add_argument("--preset", default="paper-era5")
    f.add_argument("--member-chunks", type=int, nargs="+", default=[1, 8, 24])
    f.add_argument("--dtype", default="bfloat16")
    f.add_argument("--attention-impl", default="pallas", choices=["pallas", "pallas-fused", "xla"])
    f.add_argument("--devices", type=int, default=1, help="compile-only H100s the members are split over")
    r = sub.add_parser("roofline", help="forecast- or train-step roofline: what bounds its time on the H100")
    r.add_argument("--program", default="forecast", choices=["forecast", "train"])
    r.add_argument("--preset", default="paper-era5")
    r.add_argument("--members", type=int, default=24, help="forecast: members in the compiled pass (its chunk)")
    r.add_argument("--batch", type=int, default=6, help="train: initial conditions per step")
    r.add_argument("--dtype", default="bfloat16")
    r.add_argument("--attention-impl", default=None, choices=["pallas", "pallas-fused"],
                   help="default: pallas-fused for the forecast, pallas for training")
    r.add_argument("--steps", type=int, default=10, help="forecast length the bound is quoted for")
    r.add_argument("--forecast-members", type=int, default=24, help="ensemble size the bound is quoted for")
    r.add_argument("--path-depth", type=int, default=3, help="model-path components to group by")
    r.add_argument("--save-hlo", type=Path, default=None, help="also write the optimized HLO text here")
    r.add_argument("--top", type=int, default=12)
    args = p.parse_args(argv)
    reason = deviceless.available()
    if reason:
        print(f"cannot compile for the H100 here: {reason}", file=sys.stderr)
        return 2
    commands = {"kernels": cmd_kernels, "fingerprint": cmd_fingerprint, "train": cmd_train,
                "forecast": cmd_forecast, "roofline": cmd_roofline}
    commands[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
