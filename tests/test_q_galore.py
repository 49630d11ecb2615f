"""Q-GaLore against a float64 numpy re-statement of VITA-Group/Q-GaLore (torch layout),
against optax.contrib.galore with every option off, and in the trainer (INT8 weights,
checkpoints, resume)."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from normjax import checkpoint, train
from normjax.optim import QuantizedArray, q_galore, q_galore_stats
from normjax.optim._q_galore import ScaleByQGaLoreState, galore_leaves
from normjax.optim._quantize import dequantize
from normjax.optim.labels import path_names
from tests import optim_harness as harness
from tests import trainer_utils as tu
from tests.test_q_galore_quantize import official_quantize


class OfficialQGaLore:
  """``q_galore_projector.GaLoreProjector`` (proj_type 'std') + ``QGaLoreAdamW8bit.step``
  on its 32-bit Adam path (bitsandbytes' formula), per parameter in torch layout (out, in),
  written from the code. ``lazy``: None (the gap never grows), 'signed' (official) or
  'abs'. SVD signs are arbitrary and differ between layouts, so each new singular vector
  takes the sign of the implementation's (``signs``); everything else is computed here."""

  def __init__(
    self, lr, b1, b2, eps, wd, rank, gap, scale, galore, bits, group, lazy, thr, gamma, size
  ):
    self.__dict__.update(locals())
    self.state = {}

  def project(self, st, g, it, signs):
    right = g.shape[0] >= g.shape[1]
    if st["p"] is None or it % st["gap"] == 0:
      u, _, vh = np.linalg.svd(g, full_matrices=False)
      p = vh[: self.rank] if right else u[:, : self.rank]
      flip = np.sign(np.sum(p * signs, axis=1 if right else 0))
      p = p * (flip[:, None] if right else flip[None, :])
      vec = p[0] if right else p[:, 0]
      st["svd_count"] += 1
      if st["past"] is not None:
        if len(st["queue"]) == self.size:
          st["queue"].pop(0)
        st["queue"].append(
          float(vec @ st["past"] / (np.linalg.norm(vec) * np.linalg.norm(st["past"])))
        )
        values = np.abs(st["queue"]) if self.lazy == "abs" else np.asarray(st["queue"])
        if self.lazy and len(st["queue"]) == self.size and values.sum() / self.size >= self.thr:
          st["gap"] = int(st["gap"] * self.gamma)
      st["past"] = vec
      if self.bits:
        q, s, z = official_quantize(p, self.group, self.bits)
        p = (s * (q.reshape(-1, self.group) - z)).reshape(p.shape)
      st["p"] = p
    return g @ st["p"].T if right else st["p"].T @ g

  def step(self, name, w, g, signs=None):
    st = self.state.setdefault(
      name, dict(step=0, m=0.0, v=0.0, p=None, gap=self.gap, queue=[], past=None, svd_count=0)
    )
    galore = name in self.galore
    if galore:
      g = self.project(st, g, st["step"], signs)
    st["step"] += 1
    t = st["step"]
    st["m"] = self.b1 * st["m"] + (1 - self.b1) * g
    st["v"] = self.b2 * st["v"] + (1 - self.b2) * g * g
    c2 = np.sqrt(1 - self.b2**t)
    upd = -self.lr * c2 / (1 - self.b1**t) * st["m"] / (np.sqrt(st["v"]) + self.eps * c2)
    if not galore:
      return w * (1 - self.lr * self.wd) + upd
    back = upd @ st["p"] if upd.shape[0] >= upd.shape[1] else st["p"] @ upd
    w = w + self.scale * back
    return w - self.lr * self.wd * w


SHAPES = {"tall": (16, 8), "wide": (8, 16), "square": (8, 8), "embed": (10, 4), "bias": (8,)}
GALORE = ("tall", "wide", "square")
MASK = {k: k in GALORE for k in SHAPES}


def gradients(rng, shapes, steps):
  """A stable rank-2 signal plus noise, so that consecutive top vectors are close."""
  base = {k: rng.standard_normal(s) for k, s in shapes.items()}
  return [
    {k: 3 * np.sign(b) * np.abs(b) ** 0.5 + rng.standard_normal(b.shape) for k, b in base.items()}
    for _ in range(steps)
  ]


def official_orientation(state, params, rank):
  """The implementation's projectors as the official code holds them (Vh[:r] / U[:, :r])."""
  leaves = galore_leaves(MASK, params, rank, "official")
  out = {}
  for k in GALORE:
    leaf, stored = leaves[k], state.projector[k]
    if isinstance(stored, QuantizedArray):
      shape = leaf.projector_shape[::-1] if leaf.left else leaf.projector_shape
      out[k] = np.asarray(dequantize(stored, shape, jnp.float64, 4, 16))
    else:
      out[k] = np.asarray(stored.T if leaf.left else stored)
  return out


@pytest.mark.parametrize(
  "options",
  [
    dict(),
    dict(proj_bits=4),
    dict(lazy_cosine="signed"),
    dict(lazy_cosine="abs", proj_bits=4),
  ],
  ids=["plain", "int4", "lazy_signed", "lazy_abs_int4"],
)
def test_matches_the_official_step_in_float64(options):
  hp = dict(lr=1e-2, b1=0.9, b2=0.95, eps=1e-8, wd=0.1, rank=4, gap=2, scale=0.25)
  lazy = dict(thr=0.4, gamma=2, size=2)
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    params = {k: jnp.asarray(rng.standard_normal(s)) for k, s in SHAPES.items()}
    tx = q_galore(
      hp["lr"], hp["rank"], hp["gap"], hp["scale"], hp["b1"], hp["b2"], hp["eps"], hp["wd"],
      MASK, side="official", decay_after_step=True, proj_group_size=16, cos_threshold=0.4,
      gamma_proj=2, queue_size=2, **options,
    )  # fmt: skip
    ref = OfficialQGaLore(
      **hp, galore=GALORE, bits=options.get("proj_bits"), group=16,
      lazy=options.get("lazy_cosine"), **lazy,
    )  # fmt: skip
    torch_w = {k: np.asarray(v).T if v.ndim == 2 else np.asarray(v) for k, v in params.items()}
    state, update = tx.init(params), jax.jit(tx.update)
    for grads in gradients(rng, SHAPES, 14):
      updates, state = update(jax.tree.map(jnp.asarray, grads), state, params)
      params = optax.apply_updates(params, updates)
      signs = official_orientation(state[0], params, hp["rank"])
      for k, g in grads.items():
        t = lambda x: x.T if x.ndim == 2 else x
        torch_w[k] = ref.step(k, torch_w[k], t(g), signs.get(k))
        np.testing.assert_allclose(np.asarray(params[k]), t(torch_w[k]), rtol=1e-10, atol=1e-12)
  gaps = [int(state[0].lazy[k].gap) for k in GALORE]
  assert gaps == [ref.state[k]["gap"] for k in GALORE]
  assert [int(state[0].lazy[k].svd_count) for k in GALORE] == [
    ref.state[k]["svd_count"] for k in GALORE
  ]
  if options.get("lazy_cosine"):
    assert max(gaps) > 2  # the lazy rule fired: the test covers it


def test_every_option_off_equals_optax_galore():
  rng = np.random.default_rng(1)
  params = {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in SHAPES.items()}
  mask = lambda p: jax.tree.map(lambda x: x.ndim == 2 and x.shape != (10, 4), p)
  ours = q_galore(3e-2, rank=3, update_proj_gap=2, weight_decay=0.1, weight_decay_mask=mask)
  ref = optax.contrib.galore(3e-2, rank=3, update_proj_gap=2, weight_decay=0.1, mask=mask)
  s_ours, s_ref = ours.init(params), ref.init(params)
  for grads in gradients(rng, SHAPES, 7):
    grads = jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), grads)
    u_ours, s_ours = jax.jit(ours.update)(grads, s_ours, params)
    u_ref, s_ref = jax.jit(ref.update)(grads, s_ref, params)
    for k in SHAPES:
      np.testing.assert_allclose(np.asarray(u_ours[k]), np.asarray(u_ref[k]), rtol=1e-6, atol=1e-9)
    params = optax.apply_updates(params, u_ref)


def test_official_side_compresses_the_smaller_dimension_and_state_bytes():
  params = {"w": jnp.zeros((512, 128)), "v": jnp.zeros((128, 512))}
  shapes = lambda tx: {k: v.shape for k, v in tx.init(params)[0].base_optimizer_state.mu.items()}
  assert shapes(q_galore(1.0, rank=32)) == {"w": (32, 128), "v": (128, 32)}
  assert shapes(q_galore(1.0, rank=32, side="official")) == {"w": (512, 32), "v": (32, 512)}

  def nbytes(**kw):
    state = q_galore(1.0, rank=32, side="official", **kw).init(params)[0]
    return sum(x.nbytes for x in jax.tree.leaves(state.projector))

  groups = 2 * 128 * 32 // 256
  assert nbytes() == 2 * 128 * 32 * 4
  assert nbytes(proj_bits=4) == 2 * 128 * 32 + groups * 8  # one code per byte (official)
  assert nbytes(proj_bits=4, proj_pack=True) == 2 * 128 * 32 // 2 + groups * 8


def test_lazy_gap_schedule_follows_the_fifo_rule_on_scripted_cosines():
  """The top right vector of G_t turns by angle a_t; |cos| of consecutive ones is |cos(a_t)|
  whatever the SVD signs. The abs rule's gap schedule is simulated in Python."""
  angles = [0.1, 0.2, 1.4, 1.5, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
  size, thr, steps = 3, 0.6, 40
  rng = np.random.default_rng(2)
  u = np.linalg.qr(rng.standard_normal((12, 2)))[0]
  theta, refreshes = 0.0, iter(angles)
  tx = q_galore(
    1e-3,
    rank=1,
    update_proj_gap=1,
    side="official",
    lazy_cosine="abs",
    cos_threshold=thr,
    queue_size=size,
  )  # the official side of a tall matrix projects on the right: its top vector is v
  params = {"w": jnp.zeros((12, 6))}
  state = tx.init(params)
  expected_gap, queue, count, prev, history = 1, [], 0, None, []
  for step in range(steps):
    refresh = step % expected_gap == 0
    if refresh:
      theta += next(refreshes) if prev is not None else 0.0
    v = np.zeros(6)
    v[0], v[1] = np.cos(theta), np.sin(theta)
    g = 5 * np.outer(u[:, 0], v) + 0.5 * np.outer(u[:, 1], np.eye(6)[5])
    _, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
    if refresh:
      if prev is not None:
        queue = (queue + [abs(np.cos(theta - prev))])[-size:]
        if len(queue) == size and np.mean(queue) >= thr:
          expected_gap *= 2
      prev = theta
      count += 1
    history.append((int(state[0].lazy["w"].gap), expected_gap))
  assert all(a == b for a, b in history), history
  assert expected_gap >= 8 and q_galore_stats(state)["svd_count"] == count


def test_inject_hyperparams():
  rng = np.random.default_rng(3)
  params = {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in SHAPES.items()}
  grads = jax.tree.map(lambda x: 0.5 * x + 0.1, params)
  kwargs = dict(
    learning_rate=1e-2, rank=2, update_proj_gap=1, weight_decay=0.1, decay_after_step=True,
    side="official", proj_bits=4, proj_group_size=8, lazy_cosine="abs", queue_size=2,
    cos_threshold=0.3,
  )  # fmt: skip
  static = ("rank", "proj_bits", "proj_group_size", "queue_size", "decay_after_step")
  harness.check_inject_hyperparams(q_galore, kwargs, params, grads, static_args=static, steps=4)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(rank=0), "rank=0"),
    (dict(update_proj_gap=0), "update_proj_gap=0"),
    (dict(side="left"), "side='left'"),
    (dict(lazy_cosine="cos"), "lazy_cosine='cos'"),
    (dict(proj_bits=9), "proj_bits=9"),
    (dict(proj_bits=3, proj_pack=True), "proj_pack=True needs"),
    (dict(proj_bits=4, proj_group_size=0), "proj_group_size=0"),
    (dict(queue_size=0), "queue_size=0"),
    (dict(gamma_proj=0.5), "gamma_proj=0.5"),
  ],
)
def test_bad_hyperparameters_fail_with_a_message(kwargs, message):
  with pytest.raises(ValueError, match=message):
    q_galore(1e-2, **kwargs)


def test_non_matrix_leaf_in_the_mask_fails_with_a_message():
  tx = q_galore(1e-2, galore_mask=lambda p: {"b": True})
  with pytest.raises(ValueError, match=r"galore_mask selects a leaf of shape \(3,\)"):
    tx.init({"b": jnp.zeros(3)})


# --------------------------------------------------------------------------- trainer
def tiny(steps, **extra):
  values = tu.overrides("gpt2", steps, **extra)
  values.update({"optimizer.rank": 4, "optimizer.update_proj_gap": 1, "optimizer.queue_size": 2})
  return tu.apply(tu.load_config("gpt2_qgalore"), values)


def test_trainer_int8_weights_checkpoint_and_bitwise_resume(tmp_path):
  config = tiny(6, checkpoint_every=3, keep_checkpoints=3)
  final = train.train_and_evaluate(config, str(tmp_path / "a"))
  assert np.isfinite(final["eval_loss"])
  saved = tu.restore_state(tmp_path / "a")
  kernel = saved["params"]["transformer"]["blocks"]["0"]["attn"]["qkv"]["kernel"]
  assert kernel["q"].dtype == np.uint8 and kernel["q"].shape == (32, 96)
  assert kernel["scale"].shape == (12, 1)
  flat = {"/".join(path_names(p)) for p, _ in jax.tree_util.tree_flatten_with_path(saved)[0]}
  assert any(k.endswith("cos_queue") for k in flat) and any(k.endswith("svd_count") for k in flat)
  # resume from step 3 of a copy: the same codes, scales, FIFOs and counters at step 6
  shutil.copytree(tmp_path / "a", tmp_path / "b")
  shutil.rmtree(tmp_path / "b" / "checkpoints" / "6")
  train.train_and_evaluate(config, str(tmp_path / "b"))
  resumed = tu.restore_state(tmp_path / "b")
  assert all(np.array_equal(x, y) for x, y in zip(tu.leaves(saved), tu.leaves(resumed)))
  stats = q_galore_stats(
    jax.tree.map(np.asarray, train_state_opt(config, tmp_path / "b")),
  )
  assert stats["leaves"] == 4 and 12 <= stats["svd_count"] <= 24  # gaps may have grown
  # a quantized run loads as a float model (weights dequantized)
  _, model = checkpoint.load_run(str(tmp_path / "a"))
  w = np.asarray(model.transformer.blocks[0].attn.qkv.kernel.value)
  deq = (kernel["q"].reshape(-1, 256).astype(np.float32) - kernel["zero"]) * kernel["scale"]
  np.testing.assert_allclose(w, deq.reshape(w.shape), rtol=1e-6, atol=1e-7)


def train_state_opt(config, workdir):
  """The restored optimizer state with its NamedTuples (for ``q_galore_stats``)."""
  from normjax import run

  setup = run.build(config)
  abstract = jax.eval_shape(setup.init_state, jax.random.key(0))
  manager = checkpoint.make_manager(str(workdir), 3)
  import orbax.checkpoint as ocp

  restored = manager.restore(
    manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
  )
  return restored["state"]["opt_state"]


def test_round_to_nearest_weights_train_too():
  config, initial, state, metrics = tu.train_steps(
    "gpt2_qgalore", "weights=rtn", steps=2, **tu.TINY["gpt2"]
  )
  assert all(np.isfinite(m["loss"]) for m in metrics)
  assert isinstance(
    state["params"]["transformer"]["blocks"][0]["mlp"]["fc1"]["kernel"], QuantizedArray
  )
  assert isinstance(state["opt_state"], tuple) and any(
    isinstance(x, ScaleByQGaLoreState)
    for x in jax.tree.leaves(
      state["opt_state"], is_leaf=lambda x: isinstance(x, ScaleByQGaLoreState)
    )
  )
