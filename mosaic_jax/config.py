"""Model configuration: frozen dataclasses mirroring SPEC.md's configuration table.

The JSON schema is the one of the fixtures' ``model_config`` field, so a config can
be read from a fixture, written beside a checkpoint, and read back unchanged.
Every config validates itself in ``__post_init__`` and raises ``ValueError`` naming
the offending field.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from mosaic_jax import variables


# Mosaic attention implementations (mosaic_jax.attention.api): the pure-JAX reference, the Pallas
# kernels, the kernels plus the fused forward kernels (the whole attention forward in one kernel,
# inference only; the cSwiGLU up-projection with its gate, pallas_kernels/gated_mlp, also in
# training's forward pass), or "auto" (kernels on Hopper).
ATTENTION_IMPLS = ("auto", "xla", "pallas", "pallas-fused")


def require(cond: bool, field: str, message: str) -> None:
    """Raise ``ValueError('<field>: <message>')`` unless ``cond``: config errors name their field."""
    if not cond:
        raise ValueError(f"{field}: {message}")


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """The shape of one level's Mosaic attention (shared by encoder/decoder/bottleneck)."""

    nside: int
    dim: int
    num_heads: int
    block_attn_size: int
    sparse_block_size: int
    sparse_block_count: int
    mlp_ratio: float
    gqa_ratio: int

    @property
    def num_pixels(self) -> int:
        return 12 * self.nside**2

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def num_kv_heads(self) -> int:
        return self.num_heads // self.gqa_ratio

    @property
    def mlp_hidden(self) -> int:
        return int(self.dim * self.mlp_ratio)

    def _validate(self, where: str) -> None:
        require(self.nside >= 1 and (self.nside & (self.nside - 1)) == 0, f"{where}.nside",
                 f"must be a power of two, got {self.nside}")
        require(self.num_heads >= 1, f"{where}.num_heads", f"must be positive, got {self.num_heads}")
        require(self.dim % self.num_heads == 0, f"{where}.dim",
                 f"{self.dim} is not divisible by num_heads={self.num_heads}")
        require(self.head_dim % 4 == 0, f"{where}.dim",
                 f"head_dim={self.head_dim} must be divisible by 4 for 2-D RoPE")
        require(self.gqa_ratio >= 1 and self.num_heads % self.gqa_ratio == 0, f"{where}.gqa_ratio",
                 f"num_heads={self.num_heads} is not divisible by gqa_ratio={self.gqa_ratio}")
        n = self.num_pixels
        require(self.block_attn_size >= 1 and n % self.block_attn_size == 0, f"{where}.block_attn_size",
                 f"sequence length {n} (12*nside^2) is not divisible by block_attn_size={self.block_attn_size}")
        require(self.sparse_block_size >= 1 and n % self.sparse_block_size == 0, f"{where}.sparse_block_size",
                 f"sequence length {n} is not divisible by sparse_block_size={self.sparse_block_size}")
        n_blocks = n // self.sparse_block_size
        require(1 <= self.sparse_block_count <= n_blocks, f"{where}.sparse_block_count",
                 f"top-k={self.sparse_block_count} must be in [1, {n_blocks}] (number of sparse blocks)")
        require(self.mlp_ratio > 0 and float(self.dim * self.mlp_ratio).is_integer(), f"{where}.mlp_ratio",
                 f"dim*mlp_ratio must be a positive integer, got {self.dim}*{self.mlp_ratio}")


@dataclasses.dataclass(frozen=True)
class StageConfig(AttentionConfig):
    """An encoder/decoder stage of the U-Net."""

    encoder_depth: int = 1
    decoder_depth: int = 1

    def __post_init__(self) -> None:
        self._validate("stage")
        require(self.encoder_depth >= 0, "stage.encoder_depth", "must be >= 0")
        require(self.decoder_depth >= 0, "stage.decoder_depth", "must be >= 0")


@dataclasses.dataclass(frozen=True)
class BottleneckConfig(AttentionConfig):
    """The coarsest level of the U-Net."""

    depth: int = 1

    def __post_init__(self) -> None:
        self._validate("bottleneck")
        require(self.depth >= 0, "bottleneck.depth", "must be >= 0")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture plus the data contract (channels, statics, history, time step).

    ``step_hours`` is the model time step; history states are ``history_spacing_hours``
    apart. In a rollout the day progress advances by ``stride/4`` and the year progress by
    ``stride/365.25`` per step, stride in 6 h units (SPEC.md; see ``sampler.advance_progress``).

    ``residual`` is not part of the published model (which predicts the next state directly):
    when set, the output head predicts the increment over the latest history state and starts
    near zero, so a from-scratch model starts at persistence. Small training budgets (the CPU
    demo) need it; published checkpoints are loaded with it off. ``residual_scale`` (one
    factor per channel, ``residual_std / state_std``; ``train`` fills it from the statistics
    when empty) multiplies the head's output, so the head predicts each channel's change in
    units of its typical one-step change, as GraphCast does: a change 50x smaller than the
    state's spread is otherwise lost in the optimizer's step noise.

    ``local_time_features`` (not in the published model either) adds each point's local solar
    time, ``sin/cos 2 pi (day_progress + lon/360)``, to the inputs, as GraphCast does: the
    diurnal cycle is then a function of one feature instead of a product the network must
    discover from the global time and the position.
    """

    stages: tuple[StageConfig, ...]
    bottleneck: BottleneckConfig
    k_neighbors: int = 24
    num_history_steps: int = 2
    noise_dim: int = 32
    rope_theta: float = 10000.0
    n_lon: int = 240
    n_lat: int = 121
    channels: tuple[str, ...] = variables.CHANNELS
    static_variables: tuple[str, ...] = variables.STATIC_VARIABLES
    step_hours: int = 24
    history_spacing_hours: int = 24
    residual: bool = False
    residual_scale: tuple[float, ...] = ()
    local_time_features: bool = False

    def __post_init__(self) -> None:
        # Accept lists/dicts (from JSON) and normalise to tuples of dataclasses.
        stages = tuple(s if isinstance(s, StageConfig) else StageConfig(**s) for s in self.stages)
        bottleneck = (self.bottleneck if isinstance(self.bottleneck, BottleneckConfig)
                      else BottleneckConfig(**self.bottleneck))
        object.__setattr__(self, "stages", stages)
        object.__setattr__(self, "bottleneck", bottleneck)
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "static_variables", tuple(self.static_variables))
        object.__setattr__(self, "residual_scale", tuple(float(v) for v in self.residual_scale))
        require(len(stages) >= 1, "stages", "at least one stage is required")
        levels = [s.nside for s in stages] + [bottleneck.nside]
        for i in range(len(levels) - 1):
            require(levels[i] == 2 * levels[i + 1], f"stages[{i + 1}].nside" if i + 1 < len(stages)
                     else "bottleneck.nside",
                     f"each level must halve nside (factor 4 in pixels): got {levels}")
        require(self.k_neighbors >= 1, "k_neighbors", f"must be >= 1, got {self.k_neighbors}")
        require(self.k_neighbors <= min(self.n_lon * self.n_lat, stages[0].num_pixels), "k_neighbors",
                 "larger than the number of grid points")
        require(self.num_history_steps >= 1, "num_history_steps", "must be >= 1")
        require(self.noise_dim >= 1, "noise_dim", "must be >= 1")
        require(self.n_lon >= 2 and self.n_lat >= 2, "n_lon/n_lat", "grid too small")
        require(len(self.channels) >= 1, "channels", "at least one channel is required")
        require(len(set(self.channels)) == len(self.channels), "channels", "duplicate channel names")
        require(self.step_hours > 0 and self.step_hours % 6 == 0, "step_hours",
                 f"must be a positive multiple of 6, got {self.step_hours}")
        require(self.history_spacing_hours > 0, "history_spacing_hours", "must be positive")
        if self.residual_scale:
            require(self.residual, "residual_scale", "only applies with residual=True")
            require(len(self.residual_scale) == len(self.channels), "residual_scale",
                     f"needs one factor per channel ({len(self.channels)}), got {len(self.residual_scale)}")
            require(all(math.isfinite(v) and v > 0 for v in self.residual_scale), "residual_scale",
                     "factors must be positive and finite")

    # ---- derived sizes -------------------------------------------------------------
    @property
    def num_channels(self) -> int:
        return len(self.channels)

    @property
    def num_static(self) -> int:
        return len(self.static_variables)

    @property
    def feature_dim(self) -> int:
        """Per-point input width: T states, static + xyz columns, 4 time features (+ 2 local time)."""
        return self.num_channels * self.num_history_steps + self.num_static + 3 + 4 + 2 * self.local_time_features

    @property
    def latitudes(self) -> tuple[float, ...]:
        return tuple(-90.0 + 180.0 * i / (self.n_lat - 1) for i in range(self.n_lat))

    @property
    def longitudes(self) -> tuple[float, ...]:
        return tuple(360.0 * i / self.n_lon for i in range(self.n_lon))

    @property
    def grid_step_degrees(self) -> float:
        return 360.0 / self.n_lon

    # ---- (de)serialisation ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"model config: unknown field(s) {unknown}")
        return cls(**d)

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "ModelConfig":
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text).read_text()
        return cls.from_dict(json.loads(text))


def _paper_stages(top_k: tuple[int, int, int]) -> tuple[tuple[StageConfig, ...], BottleneckConfig]:
    common = dict(block_attn_size=1024, sparse_block_size=128, mlp_ratio=4.0, gqa_ratio=4)
    stages = (
        StageConfig(nside=64, dim=768, num_heads=12, sparse_block_count=top_k[0],
                    encoder_depth=4, decoder_depth=2, **common),
        StageConfig(nside=32, dim=1024, num_heads=16, sparse_block_count=top_k[1],
                    encoder_depth=4, decoder_depth=2, **common),
    )
    bottleneck = BottleneckConfig(nside=16, dim=1280, num_heads=20, sparse_block_count=top_k[2], depth=2,
                                  **common)
    return stages, bottleneck


def _paper_era5() -> ModelConfig:
    stages, bottleneck = _paper_stages((24, 12, 4))
    return ModelConfig(stages=stages, bottleneck=bottleneck, k_neighbors=24, num_history_steps=2,
                       step_hours=24, history_spacing_hours=24)


def _paper_hres() -> ModelConfig:
    stages, bottleneck = _paper_stages((24, 12, 4))
    return ModelConfig(stages=stages, bottleneck=bottleneck, k_neighbors=20, num_history_steps=4,
                       step_hours=6, history_spacing_hours=6)


def _tiny(n_lon: int = 48, n_lat: int = 25) -> ModelConfig:
    """The fixture's "tiny" configuration (SPEC.md, Fixtures) on a 7.5 degree grid."""
    stages = (
        StageConfig(nside=8, dim=64, num_heads=4, block_attn_size=64, sparse_block_size=16,
                    sparse_block_count=4, encoder_depth=2, decoder_depth=1, mlp_ratio=2.0, gqa_ratio=2),
        StageConfig(nside=4, dim=96, num_heads=4, block_attn_size=64, sparse_block_size=16,
                    sparse_block_count=2, encoder_depth=1, decoder_depth=1, mlp_ratio=2.0, gqa_ratio=2),
    )
    bottleneck = BottleneckConfig(nside=2, dim=128, num_heads=4, block_attn_size=16, sparse_block_size=4,
                                  sparse_block_count=2, depth=1, mlp_ratio=2.0, gqa_ratio=2)
    return ModelConfig(stages=stages, bottleneck=bottleneck, k_neighbors=8, num_history_steps=2,
                       n_lon=n_lon, n_lat=n_lat, step_hours=24, history_spacing_hours=24)


def _demo() -> ModelConfig:
    """A small 6-hourly model for the CPU demo on the embedded 7.5 degree dataset."""
    tiny = _tiny()
    stage1, stage2 = tiny.stages
    return dataclasses.replace(tiny, stages=(dataclasses.replace(stage1, encoder_depth=1),
                                             dataclasses.replace(stage2, block_attn_size=48)),
                               step_hours=6, history_spacing_hours=6, residual=True,
                               local_time_features=True)


PRESETS = {
    "paper-era5": _paper_era5,
    "paper-hres": _paper_hres,
    "tiny": _tiny,
    "demo": _demo,
}


def get_config(name_or_path: str) -> ModelConfig:
    """A preset by name, or a JSON file in the fixtures' ``model_config`` schema."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]()
    path = Path(name_or_path)
    if path.suffix == ".json" and path.exists():
        return ModelConfig.from_json(path)
    raise ValueError(f"config: {name_or_path!r} is neither a preset ({', '.join(PRESETS)}) nor a JSON file")


def variant_config(variant: str) -> ModelConfig:
    """``era5`` or ``hres``: the published variants."""
    if variant not in ("era5", "hres"):
        raise ValueError(f"variant: expected 'era5' or 'hres', got {variant!r}")
    return get_config(f"paper-{variant}")


def count_from_shapes(shapes: Any) -> int:
    """Number of scalars in a pytree of shaped objects."""
    import jax

    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes))
