"""Training checkpoints with Orbax: train state, data-iterator position and run metadata.

``<workdir>/checkpoints/<step>/{state,data,meta}``. Orbax writes each checkpoint into a
temporary directory and renames it when complete (atomic); ``latest_step`` lists finished
steps only, so a leftover temporary directory from a crash is ignored (and removed on start).
Saves are asynchronous: arrays are copied to host memory before ``save`` returns, the writing
happens in the background, and ``wait`` blocks for it. Kept: the latest ``keep`` checkpoints
plus the ``keep_best`` with the lowest validation loss. Restoring takes the target shardings
of the *current* mesh, so a run resumes on any device count or mesh shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

BEST_METRIC = "val_loss"


class Checkpointer:
    """A thin wrapper around ``ocp.CheckpointManager`` with our item layout."""

    def __init__(self, directory: str | Path, *, keep: int = 3, keep_best: int = 1, async_save: bool = True) -> None:
        self.directory = Path(directory).absolute()
        policies: list[Any] = [cm.LatestN(n=keep)]
        if keep_best > 0:
            policies.append(cm.BestN(get_metric_fn=lambda m: m[BEST_METRIC], reverse=True, n=keep_best,
                                     keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=cm.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def save(self, step: int, state: Any, data_state: dict[str, Any], meta: dict[str, Any],
             metrics: dict[str, float] | None = None) -> bool:
        """Start saving (asynchronously); returns False if ``step`` is already saved."""
        if step in self.manager.all_steps():
            return False
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)),
            metrics=metrics, force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        """``(state, data_state, meta)``; arrays land with ``abstract_state``'s shardings."""
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore()))
        return out["state"], dict(out["data"]), dict(out["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
    return jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
