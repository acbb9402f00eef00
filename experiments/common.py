"""Shared helpers for experiment scripts: environment header and result files."""

from __future__ import annotations

import datetime as _dt
import platform
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# How a train-step section says TrainConfig.overlap_collectives was off (--no-overlap-collectives).
NOT_OVERLAPPED = ", collectives not overlapped (XLA latency-hiding scheduler off)"


def environment(device: str | None = None) -> dict[str, str]:
    """Date, command, device (the local devices unless ``device`` says otherwise), versions, host."""
    import jax

    dev = jax.devices()[0]
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]]),
        "device": device or f"{len(jax.devices())} x {getattr(dev, 'device_kind', dev.platform)} ({jax.default_backend()})",
        "jax": jax.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
    }


def append_result(name: str, title: str, body: str, *, device: str | None = None) -> Path:
    """Append a dated section (environment + body) to ``experiments/results/<name>.md``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    env = environment(device)
    header = "" if path.exists() else f"# {name}\n\n"
    lines = [f"## {title} — {env['date']}", "", *[f"- {k}: `{v}`" for k, v in env.items() if k != "date"], "", body,
             ""]
    with open(path, "a") as f:
        f.write(header + "\n".join(lines) + "\n")
    return path
