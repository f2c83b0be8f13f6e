"""Drawing one cartoon chest radiograph: the pictures of both demo sets.

Body outline, two dark lung fields, spine/mediastinum/heart, ribs and clavicles, plus nuisance variation
(exposure, gamma, pose, markers, tubes, electrodes, soft-tissue shadows). PNEUMONIA images additionally
carry patchy, textured opacities inside one or both lungs, from faint to dense: a local, textural signal
that a global statistic such as mean intensity hardly separates, while a small CNN can learn it.
Everything is drawn from the numpy Generator passed in, so the same generator state gives the same picture.
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
from PIL import Image

# Anatomy is rendered at (at most) this height, then upscaled: keeps ~800
# images well within seconds while the final files have realistic sizes.
_RENDER_HEIGHT = 192
# Standard normal quantiles at 256 equally likely levels: maps a random byte to Gaussian grain.
_GAUSS_QUANTILES = np.array([NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], dtype=np.float32)

def _soft(d: np.ndarray, width: float) -> np.ndarray:
    """Smooth step from 0 (d << 0) to 1 (d >> 0); anti-aliased shape edges."""
    return 0.5 + 0.5 * np.tanh(d * (0.5 / width))


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    """Approximate signed distance to an ellipse, positive inside."""
    return (1.0 - np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)) * min(ax, ay)


def _gauss(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-(((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2) * 0.5)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Band-limited noise (~unit scale): white noise on a coarse grid, upscaled."""
    h, w = shape
    gh, gw = max(2, cells), max(2, round(cells * w / h))
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))


def _segment_dist(x: np.ndarray, y: np.ndarray, p0: tuple[float, float], p1: tuple[float, float]) -> np.ndarray:
    """Distance from each pixel to the segment p0-p1 (for clavicles, markers)."""
    vx, vy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((x - p0[0]) * vx + (y - p0[1]) * vy) / (vx * vx + vy * vy), 0.0, 1.0)
    return np.hypot(x - p0[0] - t * vx, y - p0[1] - t * vy)


def _render_anatomy(rng: np.random.Generator, h: int, w: int, pneumonia: bool) -> np.ndarray:
    """Low-resolution chest radiograph in [0, 1] (float32), fully vectorised.

    Coordinates: y in [-1, 1] top to bottom, x scaled by the aspect ratio so
    shapes stay round. The anatomy sits in its own frame (X, Y), randomly
    shifted/rotated/scaled relative to the image, so position is a nuisance.
    """
    u = rng.uniform
    aspect = w / h
    ys = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    xs = np.linspace(-aspect, aspect, w, dtype=np.float32)[None, :]
    th, s = u(-0.1, 0.1), u(0.86, 1.12)
    dx, dy = u(-0.08, 0.08), u(-0.08, 0.08)
    c, sn = math.cos(th), math.sin(th)
    X = ((c * (xs - dx) + sn * (ys - dy)) / s).astype(np.float32)
    Y = ((-sn * (xs - dx) + c * (ys - dy)) / s).astype(np.float32)
    shape = (h, w)
    ax_abs = np.abs(X)

    # Body: torso + shoulders + neck, soft tissue denser towards the middle.
    bw = u(0.72, 0.92)
    body = np.maximum(_soft(_ellipse(X, Y, 0.0, 0.25, bw, 1.2), 0.02),
                      _soft(_ellipse(X, Y, 0.0, -0.55, bw * 1.04, 0.32), 0.02))
    body = np.maximum(body, _soft(_ellipse(X, Y, 0.0, -1.0, 0.19, 0.4), 0.02))
    if rng.random() < 0.5:  # arms along the sides
        arm_x = bw + u(0.08, 0.16)
        arms = _soft(0.08 - np.abs(ax_abs - arm_x), 0.02) * _soft(Y + 0.45, 0.05)
        body = np.maximum(body, arms)
    tissue = u(0.40, 0.52) + 0.10 * np.clip(1.0 - (X / bw) ** 2, 0.0, 1.0)
    img = u(0.02, 0.08) + body * tissue

    # Lungs: tapered ellipses (narrow apex, wide base), darker than tissue.
    lungs = []
    lung_geom = []
    for side in (-1.0, 1.0):
        cx = side * u(0.34, 0.4) * bw / 0.82
        cy, ax, ay = u(-0.1, 0.0), u(0.24, 0.3), u(0.56, 0.66)
        t = np.clip((Y - (cy - ay)) / (1.2 * ay), 0.0, 1.0)
        taper = 0.5 + 0.5 * np.sqrt(t)
        d = (1.0 - np.sqrt(((X - cx) / (ax * taper)) ** 2 + ((Y - cy) / ay) ** 2)) * ax
        lungs.append(_soft(d, 0.015))
        lung_geom.append((cx, cy, ax, ay))
    lung = np.maximum(lungs[0], lungs[1])

    # Heart and mediastinum overlap the medial lungs; spine runs the full height.
    hx = u(0.04, 0.14)
    heart = _soft(_ellipse(X, Y, hx, u(0.22, 0.32), u(0.22, 0.3), u(0.17, 0.23)), 0.03)
    mediast = _soft(u(0.1, 0.14) - ax_abs, 0.02) * _soft(0.35 - Y, 0.05)
    spine = _soft(u(0.05, 0.07) - ax_abs, 0.012) * body
    img -= u(0.26, 0.36) * lung * (1.0 - 0.8 * heart) * (1.0 - 0.7 * mediast)
    img += u(0.04, 0.08) * heart + u(0.06, 0.12) * spine

    # Benign lung texture: vessels/hila, present in both classes.
    vessels = _smooth_noise(rng, shape, int(rng.integers(14, 28)))
    hila = _gauss(ax_abs, Y, u(0.14, 0.2), u(-0.1, 0.0), 0.1, 0.14)
    img += lung * (0.02 * vessels + u(0.04, 0.09) * hila)

    # Ribs: curved periodic stripes over the thorax, clavicles on top.
    period, phase = u(0.13, 0.17), u(0.0, 1.0)
    v = Y - u(1.0, 1.6) * (ax_abs - 0.3) ** 2  # arcs peaking mid-lung, like posterior ribs
    stripes = (0.5 + 0.5 * np.cos(2.0 * np.pi * (v / period + phase))) ** 4
    thorax = _soft(_ellipse(X, Y, 0.0, -0.12, bw * 0.92, 0.68), 0.04) * _soft(ax_abs - 0.07, 0.02)
    img += u(0.04, 0.09) * stripes * thorax
    cl_y = u(-0.68, -0.56)
    for side in (-1.0, 1.0):
        dist = _segment_dist(X, Y, (side * 0.08, cl_y + 0.04), (side * u(0.5, 0.6), cl_y - u(0.04, 0.12)))
        img += u(0.06, 0.14) * _soft(u(0.022, 0.035) - dist, 0.008)

    # Nuisance structures, independent of the class (they must not be a cue):
    # soft-tissue (breast) shadows over the lung bases mimic diffuse opacity.
    if rng.random() < 0.5:
        amp, sx, sy, yy = u(0.03, 0.12), u(0.18, 0.28), u(0.14, 0.22), u(0.3, 0.5)
        img += amp * (_gauss(ax_abs, Y, u(0.4, 0.55), yy, sx, sy)) * body
    if rng.random() < 0.6:  # lead side marker ("L"/"R"-like) in an upper corner
        mx = float(rng.choice([-1.0, 1.0])) * (aspect - u(0.1, 0.25))
        my, size = u(-0.9, -0.7), u(0.05, 0.09)
        d1 = _segment_dist(xs, ys, (mx, my), (mx, my + size))
        d2 = _segment_dist(xs, ys, (mx, my + size), (mx + 0.6 * size, my + size))
        img += u(0.5, 0.8) * _soft(0.012 - np.minimum(d1, d2), 0.004)
    if rng.random() < 0.25:  # tube / line running down the chest
        x0, bend = u(-0.15, 0.15), u(-0.25, 0.25)
        path_x = x0 + bend * np.sin((Y + 1.0) * u(1.0, 2.5))
        line = _soft(0.012 - np.abs(X - path_x), 0.004) * _soft(u(0.0, 0.5) - Y, 0.02)
        img += u(0.25, 0.5) * line
    if rng.random() < 0.25:  # ECG electrodes
        for _ in range(int(rng.integers(2, 5))):
            ex, ey = u(-bw, bw), u(-0.6, 0.6)
            ring = np.abs(np.hypot(X - ex, Y - ey) - 0.035)
            img += u(0.3, 0.6) * _soft(0.01 - ring, 0.004)

    # The class signal: patchy, textured, soft opacities inside the lung(s),
    # from faint to dense, in one lung or both.
    if pneumonia:
        severity = u(0.4, 1.0) ** 0.5  # some faint cases, most clearly visible
        sides = [int(rng.integers(2))] if rng.random() < 0.55 else [0, 1]
        density = np.zeros(shape, dtype=np.float32)
        for _ in range(int(rng.integers(4, 12))):
            cx, cy, ax, ay = lung_geom[int(rng.choice(sides))]
            by = cy + ay * u(-0.55, 0.8)  # lower zones more often
            bx = cx + ax * u(-0.7, 0.7)
            density += u(0.4, 1.0) * _gauss(X, Y, bx, by, u(0.06, 0.18), u(0.06, 0.18))
        # Soft mottling (a sigmoid of band-limited noise): fluffy, no hard edges.
        mottle = 0.35 + 0.65 * _soft(_smooth_noise(rng, shape, int(rng.integers(16, 30))) + 0.3, 0.4)
        opacity = (1.0 - np.exp(-1.5 * density)) * mottle * lung
        img += u(0.45, 0.6) * severity * opacity

    # Exposure: gamma, contrast, brightness and a gentle gradient; these are
    # large compared with the opacities so global intensity is uninformative.
    img = np.clip(img, 0.0, 1.0) ** u(0.7, 1.4)
    img = (img - 0.35) * u(0.75, 1.3) + 0.35 + u(-0.1, 0.1)
    ang = u(0.0, 2.0 * np.pi)
    img += u(0.0, 0.06) * (math.cos(ang) * xs + math.sin(ang) * ys)
    return img.astype(np.float32)


def _sample_size(rng: np.random.Generator, min_side: int, max_side: int) -> tuple[int, int]:
    """(height, width) with both sides in range and aspect ~0.8-1.25."""
    h = int(rng.integers(min_side, max_side + 1))
    aspect = math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
    w = int(np.clip(round(h * aspect), min_side, max_side))
    return h, w


def render_image(rng: np.random.Generator, pneumonia: bool, rgb: bool, min_side: int, max_side: int) -> Image.Image:
    """Full-size image: low-res anatomy, Pillow upscale, full-res grain.

    Full-size work is kept to 8/16-bit integers (uint8 resize, grain from
    random bytes through a Gaussian lookup table): drawing float normals for
    a 3-megapixel image alone would cost more than rendering the anatomy.
    """
    h, w = _sample_size(rng, min_side, max_side)
    rh = min(_RENDER_HEIGHT, h)
    rw = max(8, round(rh * w / h))
    small = np.clip(_render_anatomy(rng, rh, rw, pneumonia) * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)
    big = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
    grain_lut = np.round(_GAUSS_QUANTILES * rng.uniform(1.5, 5.0)).astype(np.int16)
    noise = np.frombuffer(rng.bytes(h * w), dtype=np.uint8).reshape(h, w)
    gray = np.clip(big + grain_lut[noise], 0, 255).astype(np.uint8)
    if not rgb:
        return Image.fromarray(gray)
    # Some real files are RGB: same gray content in 3 channels, faint tint.
    tint = rng.uniform(0.95, 1.0, size=3).astype(np.float32)
    return Image.fromarray((gray[..., None] * tint).astype(np.uint8))
