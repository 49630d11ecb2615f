"""The trainer's optimizer builder: schedules, per-label groups, frozen leaves, clipping."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from normjax.config_args import trainer_defaults
from normjax.optim.build import make_optimizer, make_schedule

PARAMS = {
  "blocks": {
    0: {
      "attn": {"qkv": {"kernel": jnp.ones((4, 12)), "bias": jnp.ones(12)}},
      "mlp_norm": {"scale": jnp.ones(4)},
    }
  },
  "head": {"kernel": jnp.ones((4, 3))},
}
GRADS = jax.tree.map(lambda x: 0.5 * jnp.ones_like(x), PARAMS)


def config(**optimizer):
  c = trainer_defaults(total_steps=10, grad_clip_norm=None)
  c.schedule.update(warmup_steps=0, decay="constant")
  c.optimizer = ml_collections.ConfigDict(
    {"name": "sgd", "learning_rate": 0.1, "weight_decay": 0.0, **optimizer}
  )
  return c


def updates(c):
  tx, _ = make_optimizer(c, 10)
  return tx.update(GRADS, tx.init(PARAMS), PARAMS)[0]


def test_schedule_warmup_then_cosine_to_final_fraction():
  cfg = ml_collections.ConfigDict({"warmup_steps": 10, "decay": "cosine", "final_fraction": 0.1})
  s = make_schedule(1.0, cfg, 110)
  np.testing.assert_allclose(
    [s(0), s(5), s(10), s(60), s(110)], [0.0, 0.5, 1.0, 0.1 + 0.9 * 0.5, 0.1], rtol=1e-5
  )


def test_groups_route_leaves_and_inherit_learning_rate():
  c = config(
    labels="conda_groups", groups={"conda": {"learning_rate": 1.0}, "adamw": {"name": "sgd"}}
  )
  u = updates(c)
  np.testing.assert_allclose(u["blocks"][0]["attn"]["qkv"]["kernel"], -0.5)  # lr 1.0
  np.testing.assert_allclose(u["head"]["kernel"], -0.05)  # inherited lr 0.1
  with pytest.raises(ValueError, match="optimizer.groups.conda .*does not accept"):
    updates(config(labels="conda_groups", groups={"conda": {"b9": 1}, "adamw": {}}))


def test_trainable_freezes_everything_else_including_decay():
  c = config(weight_decay=0.5)
  c.trainable = "norm_affine"
  u = updates(c)
  np.testing.assert_allclose(u["blocks"][0]["mlp_norm"]["scale"], -0.05)
  assert not np.any(u["head"]["kernel"]) and not np.any(u["blocks"][0]["attn"]["qkv"]["kernel"])


def test_decay_mask_skips_norms_and_biases():
  c = config(name="adamw", weight_decay=1.0, learning_rate=1.0, b1=0.0, b2=0.0, eps=0.0)
  u = updates(c)  # adam step: -sign(g) = -1, plus -lr*wd*p = -1 where decayed
  np.testing.assert_allclose(u["head"]["kernel"], -2.0)
  np.testing.assert_allclose(u["blocks"][0]["attn"]["qkv"]["bias"], -1.0)
  np.testing.assert_allclose(u["blocks"][0]["mlp_norm"]["scale"], -1.0)


def test_adaptive_grad_clip_is_applied():
  c = config()
  c.adaptive_grad_clip = 0.01
  u = updates(c)  # unit-wise: |g| capped at 0.01 * max(|w|, 1e-3) per unit
  np.testing.assert_allclose(np.abs(u["head"]["kernel"]), 0.1 * 0.01 * 1.0, rtol=1e-5)


def test_frozen_gradients_do_not_count_in_the_clip_norm():
  c = config()
  c.trainable, c.grad_clip_norm = "norm_affine", 1.0
  u = updates(c)  # the only trainable leaf has |g| = 0.5 * 2 = 1.0: not clipped
  np.testing.assert_allclose(u["blocks"][0]["mlp_norm"]["scale"], -0.05, rtol=1e-6)
