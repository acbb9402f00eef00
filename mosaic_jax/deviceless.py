"""Compile for an H100 on a machine that has none: XLA's deviceless AOT path and the Mosaic GPU compiler.

Some GPU figures need no execution: whether a program and its Pallas kernels compile for
sm_90a, how much device memory XLA's buffer assignment gives a step (does batch 8 fit in
80 GB?), and each Mosaic GPU kernel's register count, spills and shared memory. The CUDA PJRT
plugin (``jax-cuda13-pjrt``) can produce them without a GPU: it builds a compile-only topology
from a ``GpuTargetConfigProto`` that describes the device (``H100_SXM_80GB`` below, written
from NVIDIA's published figures), and its Mosaic GPU compiler lowers each kernel to PTX and runs
the CUDA toolkit's ``ptxas -arch=sm_90a -v``. It is the same compiler, flags and pipeline that
run on the device at first call. Nothing here executes a kernel: no timing comes from here.

Set-up: ``make install`` puts the plugin under ``<venv>/h100-aot`` (``make h100-aot`` alone),
outside ``sys.path`` so that jax never tries to start it as a backend; ptxas and libdevice come
from a CUDA 13 toolkit (``/usr/local/cuda``, or ``CUDA_ROOT``). Where the plugin is installed
as a normal jax plugin (a GPU machine), that copy is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import jax

PLUGIN_DIR_ENV = "MOSAIC_JAX_H100_AOT_DIR"
_PLUGIN_SO = Path("jax_plugins", "xla_cuda13", "xla_cuda_plugin.so")
_RUNTIME_SO = Path("jax_cuda13_plugin", "libmosaic_gpu_runtime.so")


class DevicelessUnavailable(RuntimeError):
    """The CUDA plugin or toolkit needed to compile for a GPU without one is missing."""


@dataclasses.dataclass(frozen=True)
class GpuTarget:
    """The device description XLA and Mosaic GPU compile against (a GpuTargetConfigProto).

    memory_bytes is what the driver reports as total memory; JAX's allocator takes
    ``XLA_PYTHON_CLIENT_MEM_FRACTION`` of it (0.75 by default), see ``usable_bytes``.
    """

    name: str
    compute_capability: tuple[int, int]
    sm_count: int
    memory_bytes: int
    memory_bandwidth_bytes_per_s: int
    l2_cache_bytes: int
    clock_ghz: float
    smem_per_sm_bytes: int
    smem_per_block_optin_bytes: int
    registers_per_sm: int = 65536
    fp32_lanes_per_sm: int = 128

    def usable_bytes(self, mem_fraction: float | None = None) -> int:
        """Device memory a JAX process may use: ``mem_fraction`` (or the env setting, else 0.75) of it."""
        if mem_fraction is None:
            mem_fraction = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.75"))
        return int(self.memory_bytes * mem_fraction)

    def target_config(self) -> str:
        """The GpuTargetConfigProto, in protobuf text format."""
        major, minor = self.compute_capability
        return f"""gpu_device_info {{
  name: "{self.name}"
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {self.smem_per_sm_bytes}
  threads_per_core_limit: 2048
  core_count: {self.sm_count}
  fpus_per_core: {self.fp32_lanes_per_sm}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {self.memory_bandwidth_bytes_per_s}
  l2_cache_size: {self.l2_cache_bytes}
  clock_rate_ghz: {self.clock_ghz}
  device_memory_size: {self.memory_bytes}
  shared_memory_per_block_optin: {self.smem_per_block_optin_bytes}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: {self.registers_per_sm}
  registers_per_block_limit: {self.registers_per_sm}
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 10 }}
runtime_version {{ major: 13 minor: 0 }}
device_description_str: "{self.name}"
"""


# NVIDIA H100 SXM5 80 GB (HBM3): 132 SMs, 228 KiB SMEM per SM of which 227 KiB per block,
# 50 MiB L2, 3.35 TB/s, 1.98 GHz boost; 81,559 MiB is the total memory the driver reports.
H100_SXM_80GB = GpuTarget(
    name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0), sm_count=132,
    memory_bytes=81_559 * 2**20, memory_bandwidth_bytes_per_s=3_350_000_000_000,
    l2_cache_bytes=50 * 2**20, clock_ghz=1.98, smem_per_sm_bytes=228 * 1024,
    smem_per_block_optin_bytes=227 * 1024)


# ----------------------------------------------------------------------------- locating the plugin
@dataclasses.dataclass(frozen=True)
class PluginPaths:
    pjrt_plugin: Path  # the CUDA PJRT plugin (XLA:GPU compiler, Mosaic GPU compiler)
    mosaic_runtime: Path  # host runtime the Mosaic GPU kernels' launch code links against


def plugin_paths() -> PluginPaths:
    """Where the CUDA PJRT plugin is: ``$MOSAIC_JAX_H100_AOT_DIR``, ``<venv>/h100-aot``, or installed.

    Raises DevicelessUnavailable naming what is missing and how to install it.
    """
    roots = [Path(os.environ[PLUGIN_DIR_ENV])] if os.environ.get(PLUGIN_DIR_ENV) else []
    roots.append(Path(sys.prefix) / "h100-aot")
    for name in ("jax_plugins", "jax_cuda13_plugin"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            roots.extend(Path(p).parent for p in spec.submodule_search_locations)
    for root in roots:
        if (root / _PLUGIN_SO).is_file() and (root / _RUNTIME_SO).is_file():
            return PluginPaths(root / _PLUGIN_SO, root / _RUNTIME_SO)
    raise DevicelessUnavailable(
        f"the CUDA PJRT plugin (jax-cuda13-pjrt and jax-cuda13-plugin {jax.__version__}) was not found under "
        f"{', '.join(str(r) for r in roots)}; run 'make h100-aot' (part of 'make install')")


def cuda_root() -> Path:
    """The CUDA toolkit whose ptxas and libdevice the Mosaic GPU compiler uses."""
    for candidate in (os.environ.get("CUDA_ROOT"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if candidate and (Path(candidate) / "bin" / "ptxas").is_file():
            return Path(candidate)
    found = shutil.which("ptxas")
    if found:
        return Path(found).resolve().parent.parent
    raise DevicelessUnavailable("ptxas (CUDA 13 toolkit) not found in $CUDA_ROOT, $CUDA_HOME, /usr/local/cuda or on PATH")


def available() -> str | None:
    """None when deviceless compilation can run here, else the reason it cannot (for skips)."""
    try:
        plugin_paths()
        cuda_root()
    except DevicelessUnavailable as e:
        return str(e)
    return None


# ----------------------------------------------------------------------------- devices
_TOPOLOGIES: dict[tuple[str, int], list] = {}


def compile_only_devices(num_devices: int = 1, target: GpuTarget = H100_SXM_80GB) -> list:
    """``num_devices`` compile-only GPU devices of ``target`` on one host, for meshes and shardings.

    A program lowered with shardings over these devices compiles for the target and gives
    ``memory_analysis()``; it cannot run. The process's default backend is left as it is.
    """
    key = (target.name, num_devices)
    if key in _TOPOLOGIES:
        return _TOPOLOGIES[key]
    from jax._src import xla_bridge

    paths = plugin_paths()
    cuda = cuda_root()
    os.environ.setdefault("MOSAIC_GPU_RUNTIME_LIB_PATH", str(paths.mosaic_runtime))
    os.environ.setdefault("MOSAIC_GPU_CUDA_ROOT", str(cuda))
    os.environ.setdefault("CUDA_ROOT", str(cuda))
    jax.devices()  # start the default backends first, so that "cuda" is never started as one
    if not xla_bridge._backend_factories.get("cuda"):  # noqa: SLF001 - a GPU machine has it registered
        xla_bridge.register_plugin("cuda", priority=500, library_path=str(paths.pjrt_plugin), options=None)
    topology = xla_bridge.make_pjrt_topology("cuda", "", target_config=target.target_config(),
                                             topology=f"1x1x{num_devices}")
    devices = list(topology._make_compile_only_devices())  # noqa: SLF001 - jax's own AOT path (topologies.py)
    _TOPOLOGIES[key] = devices
    return devices


# ----------------------------------------------------------------------------- Mosaic GPU kernel reports
@dataclasses.dataclass(frozen=True)
class KernelReport:
    """One Mosaic GPU kernel compiled for sm_90a: ptxas's resource line and the kernel's SMEM.

    registers is per thread at the function level (the launch bound: 168 for 3 warpgroups;
    setmaxnreg then moves registers between warpgroups at run time).
    """

    registers: int
    spill_store_bytes: int
    spill_load_bytes: int
    stack_bytes: int
    named_barriers: int
    smem_bytes: int
    ptxas_log: str

    @property
    def spills(self) -> bool:
        return bool(self.spill_store_bytes or self.spill_load_bytes)


_PTXAS_USED = re.compile(r"Used (\d+) registers(?:, used (\d+) barriers)?")
_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_SMEM = re.compile(r"Resources\(smem_scratch_bytes=(\d+)")


def parse_kernel_log(log: str) -> list[KernelReport]:
    """The kernels' reports from what the Mosaic GPU compiler printed (resources, then ptxas -v)."""
    smem = [int(m) for m in _SMEM.findall(log)]
    used = _PTXAS_USED.findall(log)
    frames = _PTXAS_FRAME.findall(log)
    if not (len(smem) == len(used) == len(frames)):
        raise RuntimeError(f"could not pair the compiler's reports: {len(smem)} SMEM, {len(used)} ptxas "
                           f"register and {len(frames)} frame lines in:\n{log[-4000:]}")
    return [KernelReport(registers=int(u[0]), named_barriers=int(u[1] or 0), stack_bytes=int(f[0]),
                         spill_store_bytes=int(f[1]), spill_load_bytes=int(f[2]), smem_bytes=s, ptxas_log=log)
            for s, u, f in zip(smem, used, frames, strict=True)]


@contextlib.contextmanager
def _captured_output() -> Iterator[Callable[[], str]]:
    """Capture what is printed while compiling: Python's ``sys.stdout`` (Mosaic GPU's resource
    report) and file descriptors 1 and 2 (the C++ compiler and ptxas)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    python_out = io.StringIO()
    text: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(python_out):
                yield lambda: "".join(text)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            text += [python_out.getvalue(), sink.read().decode(errors="replace")]


_DUMP_FLAGS = ("MOSAIC_GPU_DUMP_PTXAS", "MOSAIC_GPU_DUMP_RESOURCES")


def _on_one_device(abstract_args, target: GpuTarget) -> list[jax.ShapeDtypeStruct]:
    """``abstract_args`` placed on one compile-only ``target`` device."""
    sharding = jax.sharding.SingleDeviceSharding(compile_only_devices(1, target)[0])
    return [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding) for a in abstract_args]


def compile_kernel(fn: Callable, *abstract_args: jax.ShapeDtypeStruct,
                   target: GpuTarget = H100_SXM_80GB) -> KernelReport:
    """Compile ``fn`` (which must launch exactly one Mosaic GPU kernel) for ``target``; its report.

    ``abstract_args`` are ShapeDtypeStructs; they are placed on one compile-only device. A
    kernel already compiled in this process (same hash) is not compiled again and gets no
    report, so each call should compile a kernel with new shapes or parameters.
    """
    args = _on_one_device(abstract_args, target)
    previous = {k: os.environ.get(k) for k in _DUMP_FLAGS}
    os.environ.update({k: "1" for k in _DUMP_FLAGS})
    try:
        with _captured_output() as log:
            jax.jit(fn).trace(*args).lower().compile()
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    reports = parse_kernel_log(log())
    if not reports:
        raise ValueError("the compiler reported no Mosaic GPU kernel: fn launches none, or this process has "
                         "compiled the same kernel before (Mosaic GPU compiles each kernel hash once)")
    if len(reports) > 1:
        raise ValueError(f"compile_kernel expects one Mosaic GPU kernel in fn, the compiler reported {len(reports)}")
    return reports[0]


def _custom_calls(op) -> Iterator:
    """Every ``stablehlo.custom_call`` inside ``op``, in program order."""
    for region in op.regions:
        for block in region.blocks:
            for inner in block.operations:
                if inner.operation.name == "stablehlo.custom_call":
                    yield inner.operation
                yield from _custom_calls(inner.operation)


def kernel_modules(fn: Callable, *abstract_args: jax.ShapeDtypeStruct,
                   target: GpuTarget = H100_SXM_80GB) -> list[str]:
    """The Mosaic GPU module of each kernel ``fn`` launches, lowered for ``target``, as MLIR text
    without source locations.

    Two versions of a kernel's Python that give the same text give the same GPU code, so a
    refactor of a kernel can be shown to change nothing on a machine with no GPU (and no
    compile: this only lowers). The text names the kernel (``module @<body function name>``) and
    does not depend on what else this process lowered.
    """
    from jax._src.lib.mlir import ir

    args = _on_one_device(abstract_args, target)
    program = jax.jit(fn).trace(*args).lower().compiler_ir("stablehlo")
    texts = []
    with program.context as context:
        context.allow_unregistered_dialects = True
        for call in _custom_calls(program.operation):
            if ir.StringAttr(call.attributes["call_target_name"]).value.startswith("mosaic_gpu"):
                serialized = ir.DictAttr(call.attributes["mhlo.backend_config"])["module"]
                module = ir.Module.parse(ir.StringAttr(serialized).value_bytes)
                # A per-process counter (the n-th kernel lowered here), not part of the kernel.
                if "mosaic_gpu.dump_basename" in module.operation.attributes:
                    del module.operation.attributes["mosaic_gpu.dump_basename"]
                texts.append(module.operation.get_asm(enable_debug_info=False))
    if not texts:
        raise ValueError("fn launches no Mosaic GPU kernel")
    return texts
