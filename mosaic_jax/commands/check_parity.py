"""``mosaic-jax check-parity FIXTURE.npz``: reproduce the published model's outputs."""

from __future__ import annotations

import argparse

from mosaic_jax.config import ATTENTION_IMPLS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-parity", help="compare the port with a fixture of the published model")
    p.add_argument("fixture", help="fixture .npz (model_config, inputs, noise, outputs, param/ weights)")
    p.add_argument("--checkpoint", help="take the weights from this published-style .pt instead of param/")
    p.add_argument("--attention-impl", default="xla", choices=ATTENTION_IMPLS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mosaic_jax.attention import require_kernel_device
    from mosaic_jax.parity import PARITY_TOLERANCE, run_parity

    require_kernel_device(args.attention_impl)
    result = run_parity(args.fixture, args.checkpoint, attention_impl=args.attention_impl)
    if not result.ok:
        print(f"parity FAILED: max_abs_err above {PARITY_TOLERANCE}")
    print(f"max_abs_err={result.max_abs_err:.3e} rel_l2_err={result.rel_l2_err:.3e}")
    return 0 if result.ok else 1
