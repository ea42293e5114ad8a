"""An independent numpy reference of nmprune's masks, written from DESIGN.md's
definitions (not from the C code): groups along the reduction axis, rows with
the output-channel axis fastest, ties to the lower index."""
import itertools

import numpy as np


def _view(w, axis, out_axis):
    """Move the group axis last and the output axis just before it."""
    order = [a for a in range(w.ndim) if a not in (axis, out_axis)]
    if out_axis is not None and out_axis >= 0:
        order.append(out_axis)
    order.append(axis)
    return np.transpose(w, order), order


def _unview(m, order):
    return np.transpose(m, np.argsort(order))


def _top_n(score, n):
    """Keep the n largest along the last axis; ties keep the lower index."""
    idx = np.argsort(-score, axis=-1, kind="stable")[..., :n]
    keep = np.zeros(score.shape, bool)
    np.put_along_axis(keep, idx, True, axis=-1)
    return keep


def mask(w, pattern, axis, out_axis, magnitude=None):
    """The keep-mask of weight w (an ndarray) for a pattern string."""
    mag = np.abs(w.astype(np.float64)) if magnitude is None else magnitude
    head, _, suffix = pattern.partition("@")
    if head.endswith("%"):
        return _unstructured(mag, float(head[:-1]) / 100, suffix)
    v, order = _view(mag, axis, out_axis)
    shape = v.shape
    L = shape[-1]
    oc = shape[-2] if out_axis is not None and out_axis >= 0 else 1
    n, m = map(int, head.split(":"))
    lead = shape[:-2] if out_axis is not None and out_axis >= 0 else shape[:-1]
    if not suffix:
        g = v.reshape(*shape[:-1], L // m, m)
        return _unview(_top_n(g, n).reshape(shape), order)
    if suffix.startswith("v"):
        V = int(suffix[1:])
        g = v.reshape(*lead, oc // V, V, L // m, m)
        keep = _top_n(g.sum(axis=-3), n)[..., None, :, :]
        keep = np.broadcast_to(keep, g.shape)
        return _unview(keep.reshape(shape), order)
    if suffix.startswith("b"):
        R, C = map(int, suffix[1:].split("x"))
        g = v.reshape(*lead, oc // R, R, L // (m * C), m, C)
        score = g.sum(axis=(-4, -1))
        keep = _top_n(score, n)[..., None, :, :, None]
        keep = np.broadcast_to(keep, g.shape)
        return _unview(keep.reshape(shape), order)
    if suffix == "t":
        return _unview(_tiles(v, n, m, lead, oc, L).reshape(shape), order)
    raise ValueError(pattern)


def _tile_patterns(m, n):
    """Valid tiles in preference order: row by row, keeping lower columns first
    (the tie rule: among equal sums, the lower indices are kept)."""
    rows = sorted((r for r in itertools.product((0, 1), repeat=m) if sum(r) == n),
                  key=lambda r: sum(bit << c for c, bit in enumerate(r)))
    pats = [np.array(p) for p in itertools.product(rows, repeat=m)
            if all(s == n for s in np.array(p).sum(axis=0))]
    return np.stack(pats).astype(bool)


def _tiles(v, n, m, lead, oc, L):
    pats = _tile_patterns(m, n)               # (P, m, m)
    g = v.reshape(*lead, oc // m, m, L // m, m)
    g = np.moveaxis(g, -3, -2)                # (..., rowblock, colblock, m, m)
    # Sum the kept cells in row-major order, one addition at a time, so that
    # equal sums compare equal exactly as they are defined.
    score = np.zeros(g.shape[:-2] + (len(pats),))
    for r in range(m):
        for c in range(m):
            score += g[..., r, c, None] * pats[:, r, c]
    best = np.argmax(score, axis=-1)          # the first best: the preferred one on ties
    keep = pats[best]
    return np.moveaxis(keep, -2, -3)


def _unstructured(v, p, suffix):
    """Elements in the weight's own flat order."""
    shape = v.shape
    if not suffix:
        flat = v.reshape(-1)
        k = int(np.floor(p * flat.size + 0.5))
        # smallest first; among equals the higher index goes first
        order = np.lexsort((-np.arange(flat.size), flat))
        keep = np.ones(flat.size, bool)
        keep[order[:k]] = False
        return keep.reshape(shape)
    raise ValueError("unstructured units are checked by the unit tests")
