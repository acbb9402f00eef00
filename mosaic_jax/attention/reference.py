"""Mosaic attention in pure jax.numpy: the test oracle and the portable fallback.

Layout is ``(batch, tokens, heads, head_dim)`` throughout. Query head i reads kv head
``i // G`` (G = Hq/Hk, consecutive groups). Every branch is memory-linear in the
sequence length: the local branch scores within fixed blocks, the compressed branch
among N/sparse_block_size pooled tokens, and the selected branch streams its top-k kv
blocks one at a time with an online softmax, so no N x N matrix is ever formed
(SPEC.md, "Mosaic attention").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _group(q: Array, num_kv_heads: int) -> Array:
    """(B, N, Hq, d) -> (B, N, Hk, G, d): query heads grouped under their kv head."""
    b, n, hq, d = q.shape
    return q.reshape(b, n, num_kv_heads, hq // num_kv_heads, d)


def _acc(dtype) -> jnp.dtype:
    """Accumulation/softmax dtype: float32, or float64 when the inputs are (for gradient checks)."""
    return jnp.promote_types(dtype, jnp.float32)


def _ungroup(o: Array) -> Array:
    b, n, hk, g, d = o.shape
    return o.reshape(b, n, hk * g, d)


def mean_pool(x: Array, block_size: int) -> Array:
    """Mean over contiguous token blocks: (B, N, H, d) -> (B, N/block, H, d), in float32."""
    b, n, h, d = x.shape
    return x.reshape(b, n // block_size, block_size, h, d).astype(_acc(x.dtype)).mean(axis=2)


def dense_attention(q: Array, k: Array, v: Array) -> Array:
    """Full softmax attention with GQA, float32 softmax. q (B,Nq,Hq,d), k/v (B,Nk,Hk,d)."""
    hk = k.shape[2]
    qg = _group(q, hk)
    scale = q.shape[-1] ** -0.5
    acc = _acc(q.dtype)
    s = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, preferred_element_type=acc) * scale
    p = jax.nn.softmax(s, axis=-1)
    o = jnp.einsum("bhgqk,bkhd->bqhgd", p.astype(v.dtype), v, preferred_element_type=acc)
    return _ungroup(o)


def local_attention(q: Array, k: Array, v: Array, block_size: int) -> Array:
    """Full attention inside each contiguous block of ``block_size`` tokens."""
    b, n, hq, d = q.shape
    nb = n // block_size

    def blocks(x: Array) -> Array:
        return x.reshape(b * nb, block_size, x.shape[2], d)

    o = dense_attention(blocks(q), blocks(k), blocks(v))
    return o.reshape(b, n, hq, d)


def compressed_block_attention(q: Array, k: Array, v: Array, block_size: int) -> Array:
    """Attention among mean-pooled blocks: (B, N/block, Hq, d), one output row per block."""
    return dense_attention(mean_pool(q, block_size), mean_pool(k, block_size), mean_pool(v, block_size))


def compressed_attention(q: Array, k: Array, v: Array, block_size: int) -> Array:
    """Attention among mean-pooled blocks; every token receives its block's output."""
    return jnp.repeat(compressed_block_attention(q, k, v, block_size), block_size, axis=1)


def block_scores(q: Array, k: Array, block_size: int) -> Array:
    """Selection scores ``S[b, h, qb, kb]`` (B, Hk, nb, nb), float32, no softmax scale.

    ``S[h] = (1/G) sum_g qbar[g*Hk + h] . kbar[(g*Hk + h) // G]``: the published release
    groups query heads with a stride of Hk here (not the consecutive groups attention
    uses), and its checkpoints depend on it.
    """
    hq, hk = q.shape[2], k.shape[2]
    g = hq // hk
    qbar = mean_pool(q, block_size)  # (B, nb, Hq, d)
    kbar = mean_pool(k, block_size)  # (B, nb, Hk, d)
    qheads = jnp.arange(hq).reshape(g, hk)  # [g, h] -> g*Hk + h
    q_strided = qbar[:, :, qheads, :]  # (B, nb, G, Hk, d)
    k_strided = kbar[:, :, qheads // g, :]  # (B, nb, G, Hk, d)
    return jnp.einsum("bqghd,bkghd->bhqk", q_strided, k_strided) / g


def select_blocks(q: Array, k: Array, block_size: int, top_k: int) -> Array:
    """Indices (B, Hk, nb, top_k) int32 of the top-k kv blocks per (query block, kv head)."""
    # Selection is discrete: no gradient flows through the scores (as in the release).
    scores = jax.lax.stop_gradient(block_scores(q, k, block_size))
    _, idx = jax.lax.top_k(scores, top_k)
    return idx.astype(jnp.int32)


def selected_attention(q: Array, k: Array, v: Array, indices: Array, block_size: int) -> Array:
    """Each query block attends over the concatenation of its selected kv blocks.

    ``indices`` (B, Hk, nb, top_k). The kv blocks are streamed one selection slot at a
    time with an online softmax in float32, so memory is O(N * block_size) per head.
    """
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    b, n, hq, d = q.shape
    hk = k.shape[2]
    g = hq // hk
    nb = n // block_size
    scale = d**-0.5
    qb = q.reshape(b, nb, block_size, hk, g, d)
    kb = k.reshape(b, nb, block_size, hk, d)
    vb = v.reshape(b, nb, block_size, hk, d)
    batch_ix = jnp.arange(b)[:, None, None]
    head_ix = jnp.arange(hk)[None, None, :]
    # Per slot j, gather block indices[b, h, qb, j] of kv head h: (B, nb, bs, Hk, d).
    idx = jnp.moveaxis(indices, 1, 2)  # (B, nb, Hk, top_k)

    def gather(x: Array, sel: Array) -> Array:
        # x (B, nb, bs, Hk, d), sel (B, nb, Hk) -> (B, nb, bs, Hk, d)
        out = x[batch_ix, sel, :, head_ix, :]  # (B, nb, Hk, bs, d)
        return jnp.moveaxis(out, 3, 2)

    acc_dtype = _acc(q.dtype)

    def step(carry, sel):
        m, l, acc = carry
        ks, vs = gather(kb, sel), gather(vb, sel)
        s = jnp.einsum("bqihgd,bqjhd->bqhgij", qb, ks, preferred_element_type=acc_dtype) * scale
        m_new = jnp.maximum(m, s.max(axis=-1))
        corr = jnp.exp(m - m_new)
        p = jnp.exp(s - m_new[..., None])
        l = l * corr + p.sum(axis=-1)
        acc = acc * corr[..., None] + jnp.einsum("bqhgij,bqjhd->bqhgid", p.astype(v.dtype), vs,
                                                 preferred_element_type=acc_dtype)
        return (m_new, l, acc), None

    init = (
        jnp.full((b, nb, hk, g, block_size), -jnp.inf, acc_dtype),
        jnp.zeros((b, nb, hk, g, block_size), acc_dtype),
        jnp.zeros((b, nb, hk, g, block_size, d), acc_dtype),
    )
    (m, l, acc), _ = jax.lax.scan(jax.checkpoint(step), init, jnp.moveaxis(idx, -1, 0))
    o = acc / l[..., None]  # (B, nb, Hk, G, bs, d)
    return jnp.transpose(o, (0, 1, 4, 2, 3, 5)).reshape(b, n, hq, d)


def mosaic_attention(q: Array, k: Array, v: Array, gates: Array, *, block_attn_size: int,
                     sparse_block_size: int, top_k: int) -> Array:
    """The three-branch Mosaic attention, float32 output (float64 for float64 inputs).

    q (B, N, Hq, d) and k, v (B, N, Hk, d) with RoPE already applied to q and k;
    gates (B, N, Hq, 3): softmaxed weights of the local, compressed and selected branches.
    """
    o_local = local_attention(q, k, v, block_attn_size)
    o_cmp = compressed_attention(q, k, v, sparse_block_size)
    indices = select_blocks(q, k, sparse_block_size, top_k)
    o_sel = selected_attention(q, k, v, indices, sparse_block_size)
    gates = gates.astype(o_local.dtype)
    return gates[..., 0:1] * o_local + gates[..., 1:2] * o_cmp + gates[..., 2:3] * o_sel
