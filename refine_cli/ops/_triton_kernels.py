"""Triton kernels of the three-way propagation scan: one directional scan per launch, forward and reverse-time backward,
gate normalisation and border masking fused in. Imported only when the "triton" backend runs (it needs triton).

One program owns one (n, c) plane, one direction and a block of BLOCK_K of the K maps that share the plane's gates: time
is the loop, the L neighbours are the vector, so the recurrence never leaves registers except for the one-lane shifts
(tl.gather, shared memory on a GPU). Inputs are read four steps at a time as [BLOCK_K, BLOCK_L, 4] tiles whose last
axis holds the steps: for the horizontal directions that axis is the contiguous one in memory (W), so a lane reads 4
neighbouring values at once instead of one strided value per step; for the vertical ones the lane axis is contiguous.
reshape + split hand each step's column to the recurrence without leaving the thread.
"""

from __future__ import annotations

import triton
import triton.language as tl

STEPS = 4  # time steps per tile (the split/join helpers below are written for 4)


@triton.jit
def _columns(t, S0: tl.constexpr, BLOCK_L: tl.constexpr):
    """[S0, BLOCK_L, 4] -> its four step columns, each [S0, BLOCK_L]."""
    a, b = tl.split(tl.reshape(t, (S0, BLOCK_L, 2, 2)))  # a: steps 0, 2; b: steps 1, 3
    c0, c2 = tl.split(a)
    c1, c3 = tl.split(b)
    return c0, c1, c2, c3


@triton.jit
def _tile(c0, c1, c2, c3, S0: tl.constexpr, BLOCK_L: tl.constexpr):
    """Inverse of `_columns`."""
    return tl.reshape(tl.join(tl.join(c0, c2), tl.join(c1, c3)), (S0, BLOCK_L, STEPS))


@triton.jit
def _prev_lane(v, lane, S0: tl.constexpr, BLOCK_L: tl.constexpr):
    """out[l] = v[l - 1], 0 at l = 0."""
    idx = tl.broadcast_to(tl.maximum(lane - 1, 0), (S0, BLOCK_L))
    return tl.where(lane > 0, tl.gather(v, idx, axis=1), 0.0)


@triton.jit
def _next_lane(v, lane, S0: tl.constexpr, BLOCK_L: tl.constexpr):
    """out[l] = v[l + 1], 0 at the last lane."""
    idx = tl.broadcast_to(tl.minimum(lane + 1, BLOCK_L - 1), (S0, BLOCK_L))
    return tl.where(lane < BLOCK_L - 1, tl.gather(v, idx, axis=1), 0.0)


@triton.jit
def _gates(r1, r2, r3, lane, L, eps, NORM: tl.constexpr):
    """Raw gates -> normalised (NORM 0: as given, 1: divided where |g1|+|g2|+|g3| >= 1, 2: divided by it + eps
    everywhere), then masked: lane 0 has no g1, lane L-1 no g3."""
    if NORM == 0:
        g1 = r1
        g2 = r2
        g3 = r3
    else:
        s = tl.abs(r1) + tl.abs(r2) + tl.abs(r3)
        if NORM == 1:
            inv = 1.0 / tl.maximum(s, 1.0)
        else:
            inv = 1.0 / (s + eps)
        g1 = r1 * inv
        g2 = r2 * inv
        g3 = r3 * inv
    g1 = tl.where(lane > 0, g1, 0.0)
    g3 = tl.where(lane < L - 1, g3, 0.0)
    return g1, g2, g3


@triton.jit
def _gates_backward(d1, d2, d3, r1, r2, r3, eps, NORM: tl.constexpr):
    """dLoss/dg -> dLoss/draw through g = r / s: dr_i = dg_i / s - sign(r_i) (sum_j dg_j r_j) / s^2 where divided."""
    if NORM == 0:
        o1 = d1
        o2 = d2
        o3 = d3
    else:
        s = tl.abs(r1) + tl.abs(r2) + tl.abs(r3)
        if NORM == 1:
            divided = s >= 1.0
            inv = 1.0 / tl.maximum(s, 1.0)
        else:
            divided = s >= 0.0
            inv = 1.0 / (s + eps)
        k = tl.where(divided, (d1 * r1 + d2 * r2 + d3 * r3) * inv * inv, 0.0)
        o1 = d1 * inv - tl.where(r1 > 0, 1.0, tl.where(r1 < 0, -1.0, 0.0)) * k
        o2 = d2 * inv - tl.where(r2 > 0, 1.0, tl.where(r2 < 0, -1.0, 0.0)) * k
        o3 = d3 * inv - tl.where(r3 > 0, 1.0, tl.where(r3 < 0, -1.0, 0.0)) * k
    return o1, o2, o3


@triton.jit
def _forward_step(h, xc, r1, r2, r3, p, first, T, lane, L, eps, NORM: tl.constexpr, S0: tl.constexpr,
                  BLOCK_L: tl.constexpr):
    """One time step at physical position p (skipped when p is outside the map; the first step passes x through)."""
    g1, g2, g3 = _gates(r1, r2, r3, lane, L, eps, NORM)
    new = (1.0 - g1 - g2 - g3) * xc + g1 * _prev_lane(h, lane, S0, BLOCK_L) + g2 * h + g3 * _next_lane(
        h, lane, S0, BLOCK_L
    )
    new = tl.where(p == first, xc, new)
    return tl.where((p >= 0) & (p < T), new, h)


@triton.jit
def _plane_pointers(K, C, H, W, D, di, BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr,
                    HORIZONTAL: tl.constexpr):
    nc = tl.program_id(0).to(tl.int64)
    n = nc // C
    c = nc % C
    k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)[:, None, None]
    lane = tl.arange(0, BLOCK_L)[None, :, None]
    hw = H.to(tl.int64) * W
    if HORIZONTAL:
        s_l = W
    else:
        s_l = 1
    map_offset = ((n * K + k) * C + c) * hw + lane * s_l  # [BLOCK_K, BLOCK_L, 1] into (N, K, C, H, W)
    gate_offset = ((n * D + di) * 3 * C + c) * hw + lane * s_l  # [1, BLOCK_L, 1] into (N, D, 3, C, H, W), g1
    return map_offset, gate_offset, k, lane, C * hw


@triton.jit
def scan_forward_kernel(
    x_ptr, g_ptr, out_ptr, K, C, H, W, D, di, eps,
    NORM: tl.constexpr, HORIZONTAL: tl.constexpr, REVERSE: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, ACC: tl.constexpr, MERGE: tl.constexpr,
):
    """out (N, K, C, H, W) = the scan of x (N, K, C, H, W) in one direction with gate set di of (N, D, 3, C, H, W),
    or with MERGE, out = max(out, scan) (NaN wins, as torch.maximum): launched once per direction, in order, that
    merges the directions without keeping each one's output. Grid: (N * C, cdiv(K, BLOCK_K))."""
    map_offset, gate_offset, k, lane, gate_plane = _plane_pointers(K, C, H, W, D, di, BLOCK_K, BLOCK_L, HORIZONTAL)
    if HORIZONTAL:
        T = W
        L = H
        s_t = 1
    else:
        T = H
        L = W
        s_t = W
    if REVERSE:
        first = T - 1
    else:
        first = 0
    lane2 = tl.arange(0, BLOCK_L)[None, :]
    step = tl.arange(0, STEPS)[None, None, :]
    kl_ok = (k < K) & (lane < L)
    h = tl.zeros((BLOCK_K, BLOCK_L), ACC)
    for i in range(tl.cdiv(T, STEPS)):
        if REVERSE:
            p0 = T - (i + 1) * STEPS
        else:
            p0 = i * STEPS
        phys = p0 + step
        t_ok = (phys >= 0) & (phys < T)
        x = tl.load(x_ptr + map_offset + phys * s_t, mask=kl_ok & t_ok, other=0.0).to(ACC)
        g_ok = (lane < L) & t_ok
        r1 = tl.load(g_ptr + gate_offset + phys * s_t, mask=g_ok, other=0.0).to(ACC)
        r2 = tl.load(g_ptr + gate_offset + gate_plane + phys * s_t, mask=g_ok, other=0.0).to(ACC)
        r3 = tl.load(g_ptr + gate_offset + 2 * gate_plane + phys * s_t, mask=g_ok, other=0.0).to(ACC)
        x0, x1, x2, x3 = _columns(x, BLOCK_K, BLOCK_L)
        a0, a1, a2, a3 = _columns(r1, 1, BLOCK_L)
        b0, b1, b2, b3 = _columns(r2, 1, BLOCK_L)
        c0, c1, c2, c3 = _columns(r3, 1, BLOCK_L)
        if REVERSE:
            h3 = _forward_step(h, x3, a3, b3, c3, p0 + 3, first, T, lane2, L, eps, NORM, BLOCK_K, BLOCK_L)
            h2 = _forward_step(h3, x2, a2, b2, c2, p0 + 2, first, T, lane2, L, eps, NORM, BLOCK_K, BLOCK_L)
            h1 = _forward_step(h2, x1, a1, b1, c1, p0 + 1, first, T, lane2, L, eps, NORM, BLOCK_K, BLOCK_L)
            h0 = _forward_step(h1, x0, a0, b0, c0, p0, first, T, lane2, L, eps, NORM, BLOCK_K, BLOCK_L)
            h = h0
        else:
            h0 = _forward_step(h, x0, a0, b0, c0, p0, first, T, lane2, L, eps, NORM, BLOCK_K, BLOCK_L)
            h1 = _forward_step(h0, x1, a1, b1, c1, p0 + 1, first, T, lane2, L, eps, NORM, BLOCK_K, BLOCK_L)
            h2 = _forward_step(h1, x2, a2, b2, c2, p0 + 2, first, T, lane2, L, eps, NORM, BLOCK_K, BLOCK_L)
            h3 = _forward_step(h2, x3, a3, b3, c3, p0 + 3, first, T, lane2, L, eps, NORM, BLOCK_K, BLOCK_L)
            h = h3
        out = _tile(h0, h1, h2, h3, BLOCK_K, BLOCK_L)
        if MERGE:
            seen = tl.load(out_ptr + map_offset + phys * s_t, mask=kl_ok & t_ok, other=0.0).to(ACC)
            out = tl.where((out > seen) | (out != out), out, seen)
        tl.store(out_ptr + map_offset + phys * s_t, out.to(out_ptr.dtype.element_ty), mask=kl_ok & t_ok)


@triton.jit
def _backward_step(carry, dyc, xc, r1, r2, r3, h_up, h_mid, h_down, p, first, T, lane, L, eps,
                   NORM: tl.constexpr, S0: tl.constexpr, BLOCK_L: tl.constexpr):
    """Reverse-time step at physical position p: returns the carry to the previous step, dLoss/dx of this step and
    dLoss/d(raw gates) summed over the block's maps ([1, BLOCK_L] each)."""
    valid = (p >= 0) & (p < T)
    is_first = p == first
    d = dyc + carry
    g1, g2, g3 = _gates(r1, r2, r3, lane, L, eps, NORM)
    dx = tl.where(is_first, d, (1.0 - g1 - g2 - g3) * d)
    keep = valid & (p != first)  # the first step has no gates
    d1 = tl.where(keep & (lane > 0), tl.sum(d * (h_up - xc), axis=0)[None, :], 0.0)
    d2 = tl.where(keep, tl.sum(d * (h_mid - xc), axis=0)[None, :], 0.0)
    d3 = tl.where(keep & (lane < L - 1), tl.sum(d * (h_down - xc), axis=0)[None, :], 0.0)
    o1, o2, o3 = _gates_backward(d1, d2, d3, r1, r2, r3, eps, NORM)
    # h[t][l] read h[t-1][l-1] through g1, h[t-1][l] through g2, h[t-1][l+1] through g3: gathered per target lane.
    new_carry = g2 * d + _next_lane(g1 * d, lane, S0, BLOCK_L) + _prev_lane(g3 * d, lane, S0, BLOCK_L)
    return tl.where(valid, new_carry, carry), dx, o1, o2, o3


@triton.jit
def scan_backward_kernel(
    grad_ptr, x_ptr, g_ptr, hid_ptr, winner_ptr, dx_ptr, dg_ptr, K, C, H, W, D, di, eps,
    NORM: tl.constexpr, HORIZONTAL: tl.constexpr, REVERSE: tl.constexpr, HAS_WINNER: tl.constexpr,
    ATOMIC_DG: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, ACC: tl.constexpr,
):
    """Reverse-time scan of one direction. grad, x, hid (this direction's forward output) and dx: (N, K, C, H, W);
    winner (N, K, C, H, W) uint8, the direction that won the max (gradient only where it is di); dg: (N, D, 3, C, H, W)
    raw-gate gradients, added atomically when several programs share a plane (K split in blocks)."""
    map_offset, gate_offset, k, lane, gate_plane = _plane_pointers(K, C, H, W, D, di, BLOCK_K, BLOCK_L, HORIZONTAL)
    if HORIZONTAL:
        T = W
        L = H
        s_t = 1
        s_l = W
    else:
        T = H
        L = W
        s_t = W
        s_l = 1
    if REVERSE:
        first = T - 1
        back = 1  # the previous step of a reverse scan sits one position further
    else:
        first = 0
        back = -1
    lane2 = tl.arange(0, BLOCK_L)[None, :]
    step = tl.arange(0, STEPS)[None, None, :]
    kl_ok = (k < K) & (lane < L)
    carry = tl.zeros((BLOCK_K, BLOCK_L), ACC)
    n_tiles = tl.cdiv(T, STEPS)
    for j in range(n_tiles):
        i = n_tiles - 1 - j
        if REVERSE:
            p0 = T - (i + 1) * STEPS
        else:
            p0 = i * STEPS
        phys = p0 + step
        t_ok = (phys >= 0) & (phys < T)
        ok = kl_ok & t_ok
        pos = map_offset + phys * s_t
        dy = tl.load(grad_ptr + pos, mask=ok, other=0.0).to(ACC)
        if HAS_WINNER:
            won = tl.load(winner_ptr + pos, mask=ok, other=0)
            dy = tl.where(won == di, dy, 0.0)
        x = tl.load(x_ptr + pos, mask=ok, other=0.0).to(ACC)
        prev = phys + back
        p_ok = kl_ok & (prev >= 0) & (prev < T)
        prev_pos = map_offset + prev * s_t
        h_mid = tl.load(hid_ptr + prev_pos, mask=p_ok, other=0.0).to(ACC)
        h_up = tl.load(hid_ptr + prev_pos - s_l, mask=p_ok & (lane > 0), other=0.0).to(ACC)
        h_down = tl.load(hid_ptr + prev_pos + s_l, mask=p_ok & (lane < L - 1), other=0.0).to(ACC)
        g_ok = (lane < L) & t_ok
        gpos = gate_offset + phys * s_t
        r1 = tl.load(g_ptr + gpos, mask=g_ok, other=0.0).to(ACC)
        r2 = tl.load(g_ptr + gpos + gate_plane, mask=g_ok, other=0.0).to(ACC)
        r3 = tl.load(g_ptr + gpos + 2 * gate_plane, mask=g_ok, other=0.0).to(ACC)
        y0, y1, y2, y3 = _columns(dy, BLOCK_K, BLOCK_L)
        x0, x1, x2, x3 = _columns(x, BLOCK_K, BLOCK_L)
        u0, u1, u2, u3 = _columns(h_up, BLOCK_K, BLOCK_L)
        m0, m1, m2, m3 = _columns(h_mid, BLOCK_K, BLOCK_L)
        w0, w1, w2, w3 = _columns(h_down, BLOCK_K, BLOCK_L)
        a0, a1, a2, a3 = _columns(r1, 1, BLOCK_L)
        b0, b1, b2, b3 = _columns(r2, 1, BLOCK_L)
        c0, c1, c2, c3 = _columns(r3, 1, BLOCK_L)
        # Steps in reverse scan order: descending positions for a forward scan, ascending for a reverse one.
        if REVERSE:
            carry, e0, p10, p20, p30 = _backward_step(carry, y0, x0, a0, b0, c0, u0, m0, w0, p0, first, T, lane2, L,
                                                      eps, NORM, BLOCK_K, BLOCK_L)
            carry, e1, p11, p21, p31 = _backward_step(carry, y1, x1, a1, b1, c1, u1, m1, w1, p0 + 1, first, T, lane2,
                                                      L, eps, NORM, BLOCK_K, BLOCK_L)
            carry, e2, p12, p22, p32 = _backward_step(carry, y2, x2, a2, b2, c2, u2, m2, w2, p0 + 2, first, T, lane2,
                                                      L, eps, NORM, BLOCK_K, BLOCK_L)
            carry, e3, p13, p23, p33 = _backward_step(carry, y3, x3, a3, b3, c3, u3, m3, w3, p0 + 3, first, T, lane2,
                                                      L, eps, NORM, BLOCK_K, BLOCK_L)
        else:
            carry, e3, p13, p23, p33 = _backward_step(carry, y3, x3, a3, b3, c3, u3, m3, w3, p0 + 3, first, T, lane2,
                                                      L, eps, NORM, BLOCK_K, BLOCK_L)
            carry, e2, p12, p22, p32 = _backward_step(carry, y2, x2, a2, b2, c2, u2, m2, w2, p0 + 2, first, T, lane2,
                                                      L, eps, NORM, BLOCK_K, BLOCK_L)
            carry, e1, p11, p21, p31 = _backward_step(carry, y1, x1, a1, b1, c1, u1, m1, w1, p0 + 1, first, T, lane2,
                                                      L, eps, NORM, BLOCK_K, BLOCK_L)
            carry, e0, p10, p20, p30 = _backward_step(carry, y0, x0, a0, b0, c0, u0, m0, w0, p0, first, T, lane2, L,
                                                      eps, NORM, BLOCK_K, BLOCK_L)
        dx = _tile(e0, e1, e2, e3, BLOCK_K, BLOCK_L)
        tl.store(dx_ptr + pos, dx.to(dx_ptr.dtype.element_ty), mask=ok)
        dg1 = _tile(p10, p11, p12, p13, 1, BLOCK_L)
        dg2 = _tile(p20, p21, p22, p23, 1, BLOCK_L)
        dg3 = _tile(p30, p31, p32, p33, 1, BLOCK_L)
        dg_pos = dg_ptr + gpos
        if ATOMIC_DG:
            tl.atomic_add(dg_pos, dg1, mask=g_ok)
            tl.atomic_add(dg_pos + gate_plane, dg2, mask=g_ok)
            tl.atomic_add(dg_pos + 2 * gate_plane, dg3, mask=g_ok)
        else:
            tl.store(dg_pos, dg1.to(dg_ptr.dtype.element_ty), mask=g_ok)
            tl.store(dg_pos + gate_plane, dg2.to(dg_ptr.dtype.element_ty), mask=g_ok)
            tl.store(dg_pos + 2 * gate_plane, dg3.to(dg_ptr.dtype.element_ty), mask=g_ok)
