"""Shared helpers for experiment scripts: environment header and result files."""

from __future__ import annotations

import datetime as _dt
import platform
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict[str, str]:
    import jax

    dev = jax.devices()[0]
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]]),
        "device": f"{len(jax.devices())} x {getattr(dev, 'device_kind', dev.platform)} ({jax.default_backend()})",
        "jax": jax.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
    }


def append_result(name: str, title: str, body: str) -> Path:
    """Append a dated section (environment + body) to ``experiments/results/<name>.md``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    env = environment()
    header = "" if path.exists() else f"# {name}\n\n"
    lines = [f"## {title} — {env['date']}", "", *[f"- {k}: `{v}`" for k, v in env.items() if k != "date"], "", body,
             ""]
    with open(path, "a") as f:
        f.write(header + "\n".join(lines) + "\n")
    return path
