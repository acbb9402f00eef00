"""Neighbour gathers whose gradients are gathers: tables, values and gradients against numpy."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mosaic_jax import grids, modules, neighbours


def skewed_table(rng: np.random.Generator, targets: int, k: int, sources: int) -> np.ndarray:
    """Distinct neighbours per target, a few sources read very often (like the polar pixels), one never."""
    p = rng.pareto(1.0, sources - 1) + 1e-3
    p /= p.sum()
    return np.stack([rng.choice(sources - 1, k, replace=False, p=p) for _ in range(targets)])


TABLES = {
    "to_healpix": lambda rng: (grids.interpolation_geometry(16, 9, 2, 5, True)[0], 16 * 9),
    "to_latlon": lambda rng: (grids.interpolation_geometry(16, 9, 2, 5, False)[0], 48),
    "skewed": lambda rng: (skewed_table(rng, 60, 6, 40), 40),
}


@pytest.mark.parametrize("width", [None, 1, 3])
@pytest.mark.parametrize("table", sorted(TABLES))
def test_plan_holds_every_pair_once_in_its_source_row(table, width):
    idx, sources = TABLES[table](np.random.default_rng(0))
    plan = neighbours.transpose_plan(idx, sources, width)
    pad = idx.size
    flat = idx.reshape(-1)
    rows_of = {s: [plan.primary[s]] for s in range(sources)}
    for h, s in enumerate(np.flatnonzero(plan.overflow_slot < plan.overflow_rows.shape[0])):
        assert plan.overflow_slot[s] == h
        rows_of[s] += [plan.overflow[r] for r in plan.overflow_rows[h] if r < plan.overflow.shape[0]]
    seen = []
    for s, rows in rows_of.items():
        pairs = np.concatenate(rows)
        pairs = pairs[pairs != pad]
        assert np.all(flat[pairs] == s)
        assert np.all(np.diff(pairs) > 0), "a source's pairs are summed in target order"
        seen.append(pairs)
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(pad))


def numpy_transpose(cot: np.ndarray, idx: np.ndarray, sources: int) -> np.ndarray:
    """float64 scatter-add of per-pair cotangents (B, T, k, ...) into (B, S, ...)."""
    out = np.zeros((cot.shape[0], sources, *cot.shape[3:]))
    for j in range(idx.shape[1]):
        for b in range(cot.shape[0]):
            np.add.at(out[b], idx[:, j], cot[b, :, j])
    return out


@pytest.mark.parametrize("width", [None, 2])
@pytest.mark.parametrize("table", sorted(TABLES))
def test_gather_neighbours_gradient_against_numpy(table, width):
    rng = np.random.default_rng(1)
    idx, sources = TABLES[table](rng)
    plan = neighbours.transpose_plan(idx, sources, width)
    x = rng.standard_normal((2, sources, 3, 2)).astype(np.float32)
    cot = rng.standard_normal((2, *idx.shape, 3, 2)).astype(np.float32)
    y, vjp = jax.vjp(lambda x: neighbours.gather_neighbours(x, plan), jnp.asarray(x))
    np.testing.assert_array_equal(y, x[:, idx])
    np.testing.assert_allclose(vjp(jnp.asarray(cot))[0], numpy_transpose(cot, idx, sources), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("table", sorted(TABLES))
def test_weighted_neighbour_sum_against_numpy(table):
    rng = np.random.default_rng(2)
    idx, sources = TABLES[table](rng)
    plan = neighbours.transpose_plan(idx, sources)
    b, h, d = 2, 3, 4
    w = rng.random((b, *idx.shape, h)).astype(np.float32)
    v = rng.standard_normal((b, sources, h, d)).astype(np.float32)
    cot = rng.standard_normal((b, idx.shape[0], h, d)).astype(np.float32)
    out, vjp = jax.vjp(lambda w, v: neighbours.weighted_neighbour_sum(w, v, plan), jnp.asarray(w), jnp.asarray(v))
    gathered = v.astype(np.float64)[:, idx]  # (B, T, k, H, D)
    np.testing.assert_allclose(out, np.einsum("btjh,btjhd->bthd", w, gathered), rtol=1e-5, atol=1e-5)
    d_w, d_v = vjp(jnp.asarray(cot))
    np.testing.assert_allclose(d_w, np.einsum("bthd,btjhd->btjh", cot, gathered), rtol=1e-5, atol=1e-5)
    per_pair = w[..., None].astype(np.float64) * cot[:, :, None]  # (B, T, k, H, D)
    np.testing.assert_allclose(d_v, numpy_transpose(per_pair, idx, sources), rtol=1e-5, atol=1e-5)


def test_weighted_neighbour_sum_keeps_dtypes_and_matches_reference_in_bf16():
    idx, sources = TABLES["to_latlon"](None)
    plan = neighbours.transpose_plan(idx, sources)
    rng = np.random.default_rng(3)
    w = jax.nn.softmax(jnp.asarray(rng.standard_normal((2, *idx.shape, 2)), jnp.float32), axis=2)
    v = jnp.asarray(rng.standard_normal((2, sources, 2, 8)), jnp.bfloat16)

    def loss(fn, w, v):
        return jnp.sum(jnp.sin(fn(w, v)))

    ours = jax.grad(lambda w, v: loss(lambda w, v: neighbours.weighted_neighbour_sum(w, v, plan), w, v), (0, 1))(w, v)
    ref = jax.grad(lambda w, v: loss(lambda w, v: neighbours.weighted_neighbour_sum_reference(w, v, idx), w, v),
                   (0, 1))(w, v)
    assert ours[0].dtype == jnp.float32 and ours[1].dtype == jnp.bfloat16
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ours[1], np.float32), np.asarray(ref[1], np.float32), rtol=2e-2, atol=2e-2)


def scatter_ops(fn, *args) -> int:
    """Scatter instructions in the optimized HLO of ``fn(*args)``."""
    return len(re.findall(r"= [^=]* scatter\(", fn.lower(*args).compile().as_text()))


@pytest.mark.parametrize("to_healpix", [True, False])
def test_interpolation_gradient_has_no_scatter_and_matches_autodiff(to_healpix):
    """The old formulation's gradient (autodiff through the gathers) is the reference; ours must
    equal it and compile without a scatter: on a GPU scatter-adds race, gathers do not."""
    n_lon, n_lat, nside, k, dim, heads = 16, 9, 2, 5, 16, 4
    n_src = n_lon * n_lat if to_healpix else 12 * nside**2
    x = jnp.asarray(np.random.default_rng(4).standard_normal((2, n_src, dim)), jnp.float32)
    mod = modules.Interpolation(dim, heads, n_lon, n_lat, nside, k, to_healpix)
    params = mod.init(jax.random.key(0), x)
    cot = jnp.asarray(np.random.default_rng(5).standard_normal((2, n_lon * n_lat if not to_healpix
                                                                   else 12 * nside**2, dim)), jnp.float32)

    def loss(params, x):
        return jnp.sum(mod.apply(params, x) * cot)

    grad = jax.jit(jax.grad(loss, (0, 1)))
    assert scatter_ops(grad, params, x) == 0

    idx = grids.interpolation_geometry(n_lon, n_lat, nside, k, to_healpix)[0]
    with pytest.MonkeyPatch.context() as patch:  # the same module with autodiff's gathers
        patch.setattr(modules, "gather_neighbours", lambda x, plan: x[:, plan.neighbours])
        patch.setattr(modules, "weighted_neighbour_sum",
                      lambda w, v, plan: neighbours.weighted_neighbour_sum_reference(w, v, idx))
        reference = jax.grad(loss, (0, 1))(params, x)
        assert scatter_ops(jax.jit(jax.grad(loss, (0, 1))), params, x) > 0  # what the plan replaces
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grad(params, x), reference)


def test_plan_rejects_bad_tables():
    with pytest.raises(ValueError, match="targets, k"):
        neighbours.transpose_plan(np.zeros(5, np.int32), 3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        neighbours.transpose_plan(np.array([[0, 3]]), 3)


def test_interpolation_rejects_wrong_source_count():
    mod = modules.Interpolation(16, 4, 16, 9, 2, 5, True)
    with pytest.raises(ValueError, match="144 source points, got 48"):
        mod.init(jax.random.key(0), jnp.zeros((1, 48, 16)))


def test_weighted_sum_gradient_holds_no_per_pair_value_tensor_on_the_h100():
    """The backward's weight gradient reduces over the head dim in one fusion with the gather:
    compiled for the H100, the program's buffers stay far below one (B, T, k, H, D) float32 tensor."""
    from mosaic_jax import deviceless

    if deviceless.available() is not None:
        pytest.skip(f"no deviceless H100 compiler: {deviceless.available()}")
    idx = grids.interpolation_geometry(48, 25, 8, 24, True)[0]  # (768 targets, 24)
    plan = neighbours.transpose_plan(idx, 48 * 25)
    b, (t, k), h, d = 4, idx.shape, 8, 64
    sharding = jax.sharding.SingleDeviceSharding(deviceless.compile_only_devices(1)[0])
    w = jax.ShapeDtypeStruct((b, t, k, h), jnp.float32, sharding=sharding)
    v = jax.ShapeDtypeStruct((b, plan.num_sources, h, d), jnp.bfloat16, sharding=sharding)
    cot = jax.ShapeDtypeStruct((b, t, h, d), jnp.float32, sharding=sharding)

    def loss(w, v, cot):
        return jnp.sum(neighbours.weighted_neighbour_sum(w, v, plan) * cot)

    compiled = jax.jit(jax.grad(loss, (0, 1))).lower(w, v, cot).compile()
    per_pair_values = b * t * k * h * d * 4
    assert compiled.memory_analysis().temp_size_in_bytes < per_pair_values / 4
