"""Mosaic block-sparse attention: one entry point, a pure-JAX reference, Pallas kernels elsewhere."""

from mosaic_jax.attention.api import (BatchSharding, Impl, default_impl, kernel_device_problem, mosaic_attention,
                                      per_device, require_kernel_device, validate_shapes)

__all__ = ["BatchSharding", "Impl", "default_impl", "kernel_device_problem", "mosaic_attention", "per_device",
           "require_kernel_device", "validate_shapes"]
