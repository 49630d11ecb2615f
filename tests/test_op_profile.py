"""normjax.op_profile: HLO op categories, self times of nested events, a measured table."""

import jax
import jax.numpy as jnp

from normjax import op_profile


def compiled_text(fn, *args):
  return jax.jit(fn).lower(*args).compile().as_text()


def test_dots_are_named_with_their_transposition_and_flops():
  a, b = jnp.ones((64, 32)), jnp.ones((48, 32))
  ops = op_profile.hlo_ops(compiled_text(lambda a, b: jnp.tanh(a @ b.T), a, b))
  dots = [op for op in ops.values() if op.category == "dot"]
  assert len(dots) == 1
  assert dots[0].flops == 2 * 64 * 32 * 48
  assert "dot NT k=32" in dots[0].detail and "[64,48]" in dots[0].detail
  ops = op_profile.hlo_ops(compiled_text(lambda a, b: a @ b, a, b.T))
  (dot,) = [op for op in ops.values() if op.category == "dot"]
  assert "k=32" in dot.detail and dot.flops == 2 * 64 * 32 * 48


def test_other_categories():
  x = jnp.ones((16, 16))
  text = compiled_text(lambda x: (jnp.sin(x).sum(0), jnp.exp(x) * 3.0 + x, x.T.copy()), x)
  categories = {op.category for op in op_profile.hlo_ops(text).values()}
  assert {"reduce", "elementwise", "copy / transpose"} <= categories
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME")
  x4, w4 = jnp.ones((2, 3, 8, 8)), jnp.ones((5, 3, 3, 3))
  ops = op_profile.hlo_ops(compiled_text(conv, x4, w4))
  (op,) = [op for op in ops.values() if op.category == "convolution"]
  assert op.flops == 2 * (2 * 5 * 8 * 8) * 9 * 3


def test_self_time_subtracts_nested_known_ops():
  known = {"while.1": None, "dot.2": None, "fusion.3": None}
  events = [
    (0, 100, "while.1"),
    (10, 30, "dot.2"),  # inside the while
    (12, 5, "ThunkExecutor::Execute"),  # not an op: ignored
    (50, 20, "fusion.3"),  # inside the while
    (200, 7, "dot.2"),  # a second run, top level
  ]
  times = op_profile._self_times(events, known)
  assert times == {"while.1": 50, "dot.2": 37, "fusion.3": 20}


def test_measure_and_table_on_a_real_step():
  a = jnp.ones((256, 256))
  compiled = jax.jit(lambda a: jnp.tanh(a @ a) @ a).lower(a).compile()
  measured = op_profile.measure(
    lambda: compiled(a).block_until_ready(), compiled.as_text(), steps=2
  )
  ops, self_ns, count = measured
  dot_names = [n for n in self_ns if ops[n].category == "dot"]
  assert dot_names and all(self_ns[n] > 0 and count[n] == 2 for n in dot_names)
  table = op_profile.table(measured, steps=2, wall_s=0.01)
  assert "| dot |" in table and "wall 10.0 ms/step" in table
