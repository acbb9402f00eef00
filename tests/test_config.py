"""Configs: presets, JSON round trip, parameter counts, and errors that name the field."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mosaic_jax.config import PRESETS, BottleneckConfig, ModelConfig, StageConfig, count_from_shapes, get_config
from mosaic_jax.model import param_shapes


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_round_trips(name):
    cfg = get_config(name)
    assert ModelConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("name, expected", [("paper-era5", 214_184_448), ("paper-hres", 214_310_400)])
def test_published_parameter_counts(name, expected):
    assert count_from_shapes(param_shapes(get_config(name))) == expected


def test_fixture_config_matches_tiny_preset(parity_npz):
    import numpy as np

    with np.load(parity_npz) as npz:
        cfg = ModelConfig.from_json(str(npz["model_config"]))
    assert cfg == get_config("tiny")


def test_torch_shapes_match_reference_tsv():
    """Every weight of the published model maps to our tree with the transposed shape."""
    from flax import traverse_util

    from mosaic_jax.convert import flax_to_torch_name
    from tests.conftest import shared_file

    for variant in ("era5", "hres"):
        rows = shared_file(f"reference/torch_param_shapes_{variant}.tsv").read_text().strip().splitlines()
        expected = {name: tuple(json.loads(shape.replace("(", "[").replace(")", "]").replace(",]", "]")))
                    for name, shape in (r.split("\t") for r in rows)}
        ours = {flax_to_torch_name(p): tuple(reversed(v.shape))
                for p, v in traverse_util.flatten_dict(param_shapes(get_config(f"paper-{variant}"))).items()}
        assert ours == expected


STAGE = dict(nside=8, dim=64, num_heads=4, block_attn_size=64, sparse_block_size=16, sparse_block_count=4,
             mlp_ratio=2.0, gqa_ratio=2)


@pytest.mark.parametrize("change, field", [
    (dict(block_attn_size=100), "block_attn_size"),
    (dict(sparse_block_size=10), "sparse_block_size"),
    (dict(gqa_ratio=3), "gqa_ratio"),
    (dict(num_heads=3, dim=60), "gqa_ratio"),
    (dict(sparse_block_count=49), "sparse_block_count"),
    (dict(dim=72), "dim"),
    (dict(nside=6), "nside"),
])
def test_bad_stage_raises_naming_field(change, field):
    with pytest.raises(ValueError, match=field):
        StageConfig(**{**STAGE, **change})


def test_bad_model_config_raises_naming_field():
    cfg = get_config("tiny")
    with pytest.raises(ValueError, match="bottleneck.nside"):
        dataclasses.replace(cfg, bottleneck=dataclasses.replace(cfg.bottleneck, nside=4, block_attn_size=16))
    with pytest.raises(ValueError, match="k_neighbors"):
        dataclasses.replace(cfg, k_neighbors=0)
    with pytest.raises(ValueError, match="unknown field"):
        ModelConfig.from_dict({**cfg.to_dict(), "depth": 3})
    with pytest.raises(ValueError, match="bottleneck.sparse_block_count"):
        BottleneckConfig(nside=2, dim=128, num_heads=4, block_attn_size=16, sparse_block_size=4,
                         sparse_block_count=13, mlp_ratio=2.0, gqa_ratio=2)


@pytest.mark.parametrize("device, runs", [
    (dict(platform="cpu", device_kind="cpu"), "the xla reference (this process's device is a CPU)"),
    (dict(platform="gpu", device_kind="NVIDIA H100 80GB HBM3", compute_capability="9.0"), "the Pallas kernels"),
])
def test_info_prints_the_published_count_and_what_auto_runs_here(capsys, monkeypatch, device, runs):
    import types

    import jax

    from mosaic_jax.cli import main

    monkeypatch.setattr(jax, "devices", lambda *a: [types.SimpleNamespace(**device)])
    assert main(["info", "--preset", "paper-era5"]) == 0
    out = capsys.readouterr().out
    assert "parameters: 214184448" in out
    assert f"x {device['device_kind']} ({device['platform']}); --attention-impl auto runs {runs}" in out
