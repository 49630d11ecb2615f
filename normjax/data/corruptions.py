"""Image corruptions on normalized images z (per-pixel mean 0, variance 1 over the training set).

Used by ``normjax.tools.alpha_bn_eval`` (covariate shift at test time) and
``normjax.tools.federated`` (one domain per client). All are deterministic given ``rng``:

* ``noise``: z + 0.5 * N(0, 1) (Gaussian noise of half the training pixel std);
* ``contrast``: m + 0.3 * (z - m), m = each image's mean (70 % less contrast);
* ``blur``: Gaussian blur, sigma 1 px, kernel radius 2, reflect padding, per channel;
* ``inverted``: -z (contrast inversion about the training mean);
* ``rotated``: a quarter turn counter-clockwise in the (H, W) plane.

``corruption(name, severity)`` gives ``noise``, ``contrast`` and ``blur`` at five severities
(``SEVERITIES``, 1 = mildest; ImageNet-C's convention); severity 3 is the default above:

* noise std 0.2, 0.35, 0.5, 0.75, 1.0;
* contrast factor 0.6, 0.45, 0.3, 0.2, 0.1;
* blur sigma 0.5, 0.75, 1.0, 1.25, 1.5 px, kernel radius max(2, ceil(2 sigma)).

Blur, contrast, inversion and rotation commute with the affine map from raw pixels to z up to a
constant image, so they equal the same corruption of raw pixels (no clipping to the pixel range).
"""

from __future__ import annotations

import numpy as np

NOISE_STD = 0.5
CONTRAST = 0.3
BLUR_SIGMA = 1.0
BLUR_RADIUS = 2


def gaussian_noise(images: np.ndarray, rng: np.random.Generator, std=NOISE_STD) -> np.ndarray:
  return (images + std * rng.standard_normal(images.shape)).astype(np.float32)


def low_contrast(images: np.ndarray, rng=None, factor=CONTRAST) -> np.ndarray:
  mean = images.mean(axis=(1, 2, 3), keepdims=True)
  return (mean + factor * (images - mean)).astype(np.float32)


def gaussian_blur(images: np.ndarray, rng=None, sigma=BLUR_SIGMA) -> np.ndarray:
  radius = max(BLUR_RADIUS, int(np.ceil(2 * sigma)))
  offsets = np.arange(-radius, radius + 1)
  kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
  kernel /= kernel.sum()
  out = images.astype(np.float64)
  for axis in (1, 2):  # separable: rows, then columns
    pad = [(0, 0)] * out.ndim
    pad[axis] = (radius, radius)
    padded = np.pad(out, pad, mode="reflect")
    size = out.shape[axis]
    out = sum(w * np.take(padded, np.arange(size) + i, axis=axis) for i, w in enumerate(kernel))
  return out.astype(np.float32)


def inverted(images: np.ndarray, rng=None) -> np.ndarray:
  return (-images).astype(np.float32)


def rotated(images: np.ndarray, rng=None) -> np.ndarray:
  return np.ascontiguousarray(np.rot90(images, k=1, axes=(1, 2))).astype(np.float32)


CORRUPTIONS = {
  "clean": lambda images, rng=None: images,
  "noise": gaussian_noise,
  "contrast": low_contrast,
  "blur": gaussian_blur,
}
SEVERITIES = {  # the one parameter of each corruption at severity 1..5
  "noise": (gaussian_noise, "std", (0.2, 0.35, NOISE_STD, 0.75, 1.0)),
  "contrast": (low_contrast, "factor", (0.6, 0.45, CONTRAST, 0.2, 0.1)),
  "blur": (gaussian_blur, "sigma", (0.5, 0.75, BLUR_SIGMA, 1.25, 1.5)),
}


def corruption(name: str, severity: int = 3):
  """``CORRUPTIONS[name]`` at ``severity`` 1..5 (3 = the default; ``clean`` has none)."""
  if name == "clean":
    return CORRUPTIONS["clean"]
  if name not in SEVERITIES:
    raise ValueError(f"corruption {name!r}: known: {', '.join(CORRUPTIONS)}")
  if severity not in range(1, 6):
    raise ValueError(f"severity={severity!r}: must be 1..5")
  fn, param, values = SEVERITIES[name]
  value = values[severity - 1]
  return lambda images, rng=None: fn(images, rng, **{param: value})


# the federated domains: the alpha-BN corruptions' names where they coincide
DOMAINS = {
  "original": CORRUPTIONS["clean"],
  "inverted": inverted,
  "rotated": rotated,
  "noisy": gaussian_noise,
  "blurred": gaussian_blur,
  "low_contrast": low_contrast,
}
