"""The canvas a MiniCity scene is drawn on: label map, RGB and texture, with shape primitives."""

from __future__ import annotations

from math import ceil, floor

import numpy as np

Paint = tuple[np.ndarray, np.ndarray]
"""An RGB colour (0-255 floats) and the (fine, smooth) texture amplitudes of one part."""


class Canvas:
    """Label map, float RGB and per-pixel texture amplitudes, with clipped shape primitives."""

    def __init__(self, height: int, width: int) -> None:
        self.h, self.w = height, width
        self.label = np.zeros((height, width), np.uint8)
        self.rgb = np.zeros((height, width, 3), np.float32)
        self.tex = np.zeros((height, width, 2), np.float32)

    def _put(
        self,
        rows: slice,
        cols: slice,
        mask: np.ndarray | None,
        label: int,
        paint: Paint,
    ) -> None:
        rgb, tex = paint
        if mask is None:
            self.label[rows, cols] = label
            self.rgb[rows, cols] = rgb
            self.tex[rows, cols] = tex
        else:
            self.label[rows, cols][mask] = label
            self.rgb[rows, cols][mask] = rgb
            self.tex[rows, cols][mask] = tex

    @staticmethod
    def _span(a0: float, a1: float, n: int) -> tuple[int, int]:
        """Pixels whose centres fall in [a0, a1); one pixel for thin shapes over 0.3 px."""
        i0, i1 = ceil(a0 - 0.5), ceil(a1 - 0.5)
        if i1 <= i0 and a1 - a0 > 0.3:
            i0 = floor(0.5 * (a0 + a1))
            i1 = i0 + 1
        return max(i0, 0), min(i1, n)

    def rect(
        self,
        x0: float,
        y0: float,
        x1: float,
        y1: float,
        label: int,
        paint: Paint,
    ) -> None:
        c0, c1 = self._span(x0, x1, self.w)
        r0, r1 = self._span(y0, y1, self.h)
        if c1 > c0 and r1 > r0:
            self._put(slice(r0, r1), slice(c0, c1), None, label, paint)

    def _grid(
        self, x0: float, y0: float, x1: float, y1: float
    ) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
        c0, c1 = max(floor(x0), 0), min(ceil(x1) + 1, self.w)
        r0, r1 = max(floor(y0), 0), min(ceil(y1) + 1, self.h)
        if c1 <= c0 or r1 <= r0:
            return None
        px = np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5
        py = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
        return slice(r0, r1), slice(c0, c1), px, py

    def ellipse(
        self,
        cx: float,
        cy: float,
        rx: float,
        ry: float,
        label: int,
        paint: Paint,
        inner: float = 0.0,
    ) -> None:
        """Filled ellipse, or a ring when `inner` (a fraction of the radii) is positive."""
        rx, ry = max(rx, 0.5), max(ry, 0.5)
        grid = self._grid(cx - rx, cy - ry, cx + rx, cy + ry)
        if grid is None:
            return
        rows, cols, px, py = grid
        d = ((px - cx) / rx) ** 2 + ((py - cy) / ry) ** 2
        mask = d <= 1.0
        if inner > 0.0:
            mask &= d >= inner**2
        if mask.any():
            self._put(rows, cols, mask, label, paint)

    def line(
        self,
        x0: float,
        y0: float,
        x1: float,
        y1: float,
        width: float,
        label: int,
        paint: Paint,
    ) -> None:
        """Thick segment, at least about one pixel wide."""
        r = max(0.5 * width, 0.5)
        grid = self._grid(min(x0, x1) - r, min(y0, y1) - r, max(x0, x1) + r, max(y0, y1) + r)
        if grid is None:
            return
        rows, cols, px, py = grid
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((px - x0) * dx + (py - y0) * dy) / max(dx * dx + dy * dy, 1e-6), 0.0, 1.0)
        mask = (px - x0 - t * dx) ** 2 + (py - y0 - t * dy) ** 2 <= r * r
        if mask.any():
            self._put(rows, cols, mask, label, paint)

    def polygon(self, points: list[tuple[float, float]], label: int, paint: Paint) -> None:
        """Filled convex polygon (vertices in either winding order)."""
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        grid = self._grid(min(xs), min(ys), max(xs), max(ys))
        if grid is None:
            return
        rows, cols, px, py = grid
        inside_pos = np.ones((py.shape[0], px.shape[1]), bool)
        inside_neg = inside_pos.copy()
        for (ax, ay), (bx, by) in zip(points, points[1:] + points[:1], strict=True):
            cross = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
            inside_pos &= cross >= 0
            inside_neg &= cross <= 0
        mask = inside_pos | inside_neg
        if not mask.any():
            cx, cy = float(np.mean(xs)), float(np.mean(ys))
            if max(xs) - min(xs) > 0.6 and max(ys) - min(ys) > 0.6:
                self.rect(cx - 0.5, cy - 0.5, cx + 0.5, cy + 0.5, label, paint)
            return
        self._put(rows, cols, mask, label, paint)
