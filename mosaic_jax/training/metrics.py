"""Watching a run: progress bar, TensorBoard scalars, throughput and MFU.

MFU = model FLOPs per device per step / (step time x peak FLOP/s per device). Model FLOPs
are the matrix FLOPs of the train step without rematerialisation, counted from its jaxpr
(``train_step.train_step_flops``, ``mosaic_jax.flop_count``): XLA's cost analysis counts
a loop body once and a Pallas kernel as zero, which would leave out most of the attention.
Peak FLOP/s is the dense bf16 tensor-core rate of the device kind, or ``--peak-tflops``; on
a CPU there is no default and MFU is not reported.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax

# dense bf16 peak TFLOP/s per device (vendor datasheets), by a name in the device kind; a bare
# name is the SXM part, and the PCIe / NVL parts of the H100 are slower
PEAK_TFLOPS = {
    "H100": 989.4,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H200": 989.4,
    "H800": 989.4,
    "GH200": 989.4,
    "A100": 312.0,
    "B200": 2250.0,
}


def peak_flops_per_device(override_tflops: float | None = None) -> float | None:
    """The override, else the peak of the longest ``PEAK_TFLOPS`` name in the first device's
    kind (so "NVIDIA H100 PCIe" is not taken for an SXM H100); None for unknown kinds (CPU)."""
    if override_tflops is not None:
        return override_tflops * 1e12
    kind = getattr(jax.devices()[0], "device_kind", "")
    names = [name for name in PEAK_TFLOPS if name in kind]
    return PEAK_TFLOPS[max(names, key=len)] * 1e12 if names else None


def device_memory_limit() -> int | None:
    """Bytes JAX's allocator may hold on this process's first device (``XLA_PYTHON_CLIENT_MEM_FRACTION``
    of a GPU's memory); None where the device reports no limit (CPU)."""
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats
        return None
    return (stats or {}).get("bytes_limit")


@dataclasses.dataclass(frozen=True)
class CompiledMemory:
    """XLA's buffer assignment for one device (bytes): what the program needs resident."""

    argument: int
    output: int
    alias: int
    temp: int

    @property
    def total(self) -> int:
        return self.argument + self.output + self.temp - self.alias

    @classmethod
    def of(cls, compiled) -> CompiledMemory:
        m = compiled.memory_analysis()
        return cls(m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes, m.temp_size_in_bytes)


def memory_summary(compiled: Any) -> str:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return "memory analysis unavailable"
    if m is None:
        return "memory analysis unavailable"
    gib = 2.0**30
    return (f"args {m.argument_size_in_bytes / gib:.2f} GiB, outputs {m.output_size_in_bytes / gib:.2f} GiB, "
            f"temps {m.temp_size_in_bytes / gib:.2f} GiB, "
            f"generated code {m.generated_code_size_in_bytes / gib:.3f} GiB")


class Throughput:
    """Moving average of step times (the first step after compiling is not counted)."""

    def __init__(self, samples_per_step: int, flops_per_device_step: float | None, peak: float | None,
                 window: int = 20) -> None:
        self.samples_per_step = samples_per_step
        self.flops = flops_per_device_step
        self.peak = peak
        self.window = window
        self.times: list[float] = []
        self._last: float | None = None

    def tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.times.append(now - self._last)
            self.times = self.times[-self.window:]
        self._last = now

    def reset_clock(self) -> None:
        self._last = None

    @property
    def step_time(self) -> float | None:
        return sum(self.times) / len(self.times) if self.times else None

    @property
    def samples_per_sec(self) -> float | None:
        t = self.step_time
        return self.samples_per_step / t if t else None

    @property
    def mfu(self) -> float | None:
        t = self.step_time
        if not t or not self.flops or not self.peak:
            return None
        return self.flops / (t * self.peak)


class Writer:
    """TensorBoard scalars and a ``metrics.jsonl`` copy (primary process only; elsewhere a no-op)."""

    def __init__(self, logdir: str | Path | None, jsonl: str | Path | None = None) -> None:
        self._w = None
        self._jsonl = None
        if jax.process_index() == 0:
            if logdir is not None:
                from tensorboardX import SummaryWriter

                self._w = SummaryWriter(str(logdir))
            if jsonl is not None:
                self._jsonl = open(jsonl, "a")

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        values = {k: float(v) for k, v in values.items() if v is not None}
        if self._jsonl is not None:
            import json

            self._jsonl.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
            self._jsonl.flush()
        if self._w is None:
            return
        for k, v in values.items():
            self._w.add_scalar(k, v, step)
        self._w.flush()

    def text(self, step: int, tag: str, text: str) -> None:
        if self._w is not None:
            self._w.add_text(tag, text, step)

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
        if self._jsonl is not None:
            self._jsonl.close()


def format_postfix(m: dict[str, Any], tp: Throughput) -> dict[str, str]:
    out = {"loss": f"{m['loss']:.4f}", "lr": f"{m['learning_rate']:.2e}", "gnorm": f"{m['grad_norm']:.3f}"}
    if tp.samples_per_sec is not None:
        out["samples/s"] = f"{tp.samples_per_sec:.2f}"
    if tp.mfu is not None:
        out["MFU"] = f"{100 * tp.mfu:.1f}%"
    if m.get("total_nonfinite"):
        out["skipped"] = str(int(m["total_nonfinite"]))
    return out
