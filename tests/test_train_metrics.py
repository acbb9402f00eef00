"""What the training loop reads about the device and the compiled step: peak FLOP/s for MFU,
the allocator's limit, and the step's buffers."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import pytest

from mosaic_jax.training.metrics import CompiledMemory, device_memory_limit, peak_flops_per_device


@pytest.mark.parametrize("kind, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.4),
    ("NVIDIA H100 PCIe", 756.0),  # not the SXM part's peak although its name holds "H100"
    ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.4),
    ("NVIDIA GH200 480GB", 989.4),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("cpu", None),
])
def test_peak_flops_follow_the_device_kind(monkeypatch, kind, tflops):
    monkeypatch.setattr(jax, "devices", lambda *a: [types.SimpleNamespace(device_kind=kind)])
    assert peak_flops_per_device() == (None if tflops is None else pytest.approx(tflops * 1e12))
    assert peak_flops_per_device(100.0) == 100e12  # the override wins


def test_the_cpu_reports_no_memory_limit():
    assert device_memory_limit() is None


def test_compiled_memory_counts_a_donated_buffer_once():
    x = jnp.ones(1024, jnp.float32)
    donated = CompiledMemory.of(jax.jit(lambda a: a + 1, donate_argnums=0).lower(x).compile())
    kept = CompiledMemory.of(jax.jit(lambda a: a + 1).lower(x).compile())
    assert (donated.argument, donated.output, donated.alias) == (4096, 4096, 4096)
    assert donated.total == 4096 + donated.temp
    assert kept.total == 8192 + kept.temp
