"""The 'inpainting' task: reconstruct the pixels under a hole mask.

Batches (``data.name='masked_digits'``) hold ``image`` (B, H, W, C) in [0, 1] and ``hole``
(B, H, W, 1), 1 = missing. The model is called on ``(image, hole)`` and must fill the holes
itself (``normjax.models.inpaint.InpaintNet`` blanks them first, as geekyutao/RN's generator).

* loss: L1 between the raw output and the image over all pixels (the L1 term of the official
  RN generator loss, nn.L1Loss; its adversarial term is left out);
* metric ``psnr``: 10 log10(1 / MSE) dB of the composited image (output inside the hole,
  the known pixels outside, as the official evaluation), per example, data range 1 (MSE
  floored at 1e-10);
* ``derived``: nothing; the summary line prints PSNR and L1.
"""

from __future__ import annotations

import jax.numpy as jnp

from normjax.tasks import TASKS, Task

MSE_FLOOR = 1e-10


def composite(outputs, image, hole):
  """The model's pixels inside the hole, the known ones elsewhere."""
  return outputs * hole + image * (1 - hole)


def psnr(prediction, target, axes):
  mse = jnp.mean(jnp.square(prediction - target), axes)
  return 10.0 * jnp.log10(1.0 / jnp.maximum(mse, MSE_FLOOR))


def per_example(outputs, batch):
  image, hole = batch["image"], batch["hole"]
  axes = tuple(range(1, image.ndim))
  loss = jnp.mean(jnp.abs(outputs - image), axes)
  return loss, psnr(composite(outputs, image, hole), image, axes)


TASKS.register(
  "inpainting",
  Task(
    inputs=lambda batch: (batch["image"], batch["hole"]),
    per_example=per_example,
    metric="psnr",
    data_kwargs=lambda info: {"in_channels": info.image_shape[-1]},
    summary=lambda final, info: (
      f"final {info.eval_split} PSNR {final['eval_psnr']:.2f} dB (holes filled by the "
      f"model, known pixels kept), L1 {final['eval_loss']:.4f}"
    ),
  ),
)
