"""Hugging Face GPT-2 in and out (normjax.interop.hf) against transformers itself.

Tiny random GPT-2s (2 layers, width 64; vocab 256 tied and 300 untied) are built with
transformers, every parameter redrawn (LayerNorm affines included, so a mapping error shows),
saved with ``save_pretrained`` and compared: import logits (float32 to 1e-4, float64 to
1e-10), the config fields that fold into weights, sharded and hub-cache layouts, both round
trips, the LN-free export of frozen FakeLN models and of a LayerNorm-removal fine-tune, the
Pre-RMSNorm/CRMSNorm conversion command, greedy sampling against ``generate``, refusals.
"""

import json
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from normjax import checkpoint, train  # noqa: E402
from normjax.config_schema import flatten, rule_for  # noqa: E402
from normjax.interop import hf, hf_files  # noqa: E402
from normjax.models.gpt2 import GPT2  # noqa: E402
from normjax.norms.fakeln import FakeLN  # noqa: E402
from normjax.surgery.folding import fold_norms  # noqa: E402
from normjax.tools import convert, sample  # noqa: E402
from normjax.tools import hf as hf_tool  # noqa: E402
from tests import trainer_utils as tu  # noqa: E402
from tests.test_config_keys import refusal, with_value  # noqa: E402

WIDTH, LAYERS, HEADS, POSITIONS = 64, 2, 4, 48


def tiny_gpt2(directory, *, vocab=256, tied=True, seed=0, scale=0.3, **fields):
  """A random transformers GPT-2 saved in ``directory``; returns the (eval) torch model."""
  torch.manual_seed(seed)
  config = transformers.GPT2Config(
    vocab_size=vocab,
    n_positions=POSITIONS,
    n_embd=WIDTH,
    n_layer=LAYERS,
    n_head=HEADS,
    tie_word_embeddings=tied,
    bos_token_id=vocab - 1,
    eos_token_id=vocab - 1,
    **fields,
  )
  model = transformers.GPT2LMHeadModel(config).eval()
  with torch.no_grad():
    for key, p in model.named_parameters():  # LayerNorm weights around 1, the rest around 0
      p.copy_(torch.randn_like(p) * scale + (1.0 if "ln_" in key and key.endswith("weight") else 0))
  model.save_pretrained(str(directory))
  return model


def torch_logits(model, tokens, dtype=torch.float32):
  with torch.no_grad():
    return model.to(dtype)(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


def tokens_for(vocab, rows=2, length=20, seed=0):
  return np.random.default_rng(seed).integers(0, vocab, (rows, length)).astype(np.int32)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf")
  models = {}
  for name, kwargs in (("bytes_tied", {}), ("bpe_untied", {"vocab": 300, "tied": False})):
    models[name] = (root / name, tiny_gpt2(root / name, **kwargs))
  return models


@pytest.mark.parametrize("name", ["bytes_tied", "bpe_untied"])
def test_import_gives_transformers_logits(checkpoints, name):
  directory, reference = checkpoints[name]
  vocab = reference.config.vocab_size
  tokens = tokens_for(vocab)
  model = hf.load_gpt2(directory)
  assert isinstance(model, GPT2) and (model.head is None) == reference.config.tie_word_embeddings
  expected = torch_logits(reference, tokens)
  assert np.abs(expected).max() > 1.0  # logits of a real scale, not ~0
  np.testing.assert_allclose(np.asarray(model(tokens)), expected, atol=1e-4, rtol=0)
  with jax.enable_x64(True):
    wide = hf.load_gpt2(directory, dtype="float64")
    logits = np.asarray(wide(tokens))
  assert logits.dtype == np.float64
  np.testing.assert_allclose(logits, torch_logits(reference, tokens, torch.float64), atol=1e-10)


@pytest.mark.parametrize(
  "fields",
  [
    {"scale_attn_by_inverse_layer_idx": True},
    {"scale_attn_weights": False, "scale": 0.1},
    {"reorder_and_upcast_attn": True, "activation_function": "gelu_pytorch_tanh"},
    {"n_inner": 2 * WIDTH, "layer_norm_epsilon": 1e-3},
  ],
)
def test_config_fields_are_mapped(tmp_path, fields):
  reference = tiny_gpt2(tmp_path, seed=1, **fields)
  tokens = tokens_for(256, seed=1)
  with jax.enable_x64(True):
    logits = np.asarray(hf.load_gpt2(tmp_path, dtype="float64")(tokens))
  np.testing.assert_allclose(logits, torch_logits(reference, tokens, torch.float64), atol=1e-10)


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("activation_function", "gelu", "tanh-approximate GELU"),
    ("add_cross_attention", True, "cross-attention"),
    ("n_inner", 100, "multiple of n_embd=64"),
    ("model_type", "gpt_neox", "only GPT-2"),
  ],
)
def test_unimplemented_config_fields_are_refused_by_name(field, value, message):
  with pytest.raises(ValueError, match=f"config field {field}={value!r}: .*{message}"):
    hf.gpt2_kwargs({"n_embd": 64, "n_head": 4, field: value})


def test_sharded_checkpoints_and_the_hub_cache_layout(checkpoints, tmp_path, monkeypatch):
  directory, reference = checkpoints["bytes_tied"]
  tokens = tokens_for(256)
  expected = np.asarray(hf.load_gpt2(directory)(tokens))
  reference.save_pretrained(str(tmp_path / "sharded"), max_shard_size="40KB")
  assert (tmp_path / "sharded" / hf_files.SHARD_INDEX).is_file()
  assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
  np.testing.assert_array_equal(np.asarray(hf.load_gpt2(tmp_path / "sharded")(tokens)), expected)
  repo = tmp_path / "hub" / "models--tiny-org--tiny-gpt2"
  (repo / "blobs").mkdir(parents=True)
  for revision in ("0123abc", "4567def"):
    (repo / "snapshots" / revision).mkdir(parents=True)
    for f in directory.iterdir():  # snapshots hold symlinks into blobs/
      blob = repo / "blobs" / f"{revision}-{f.name}"
      shutil.copyfile(f, blob)
      (repo / "snapshots" / revision / f.name).symlink_to(blob)
  with pytest.raises(FileNotFoundError, match="2 snapshots"):
    hf_files.resolve(repo)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text("4567def")
  assert hf_files.resolve(repo) == repo / "snapshots" / "4567def"
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
  np.testing.assert_array_equal(np.asarray(hf.load_gpt2("tiny-org/tiny-gpt2")(tokens)), expected)
  with pytest.raises(FileNotFoundError, match="never downloads"):
    hf_files.resolve("tiny-org/absent")


def test_bfloat16_tensors_are_read_from_the_file_header(checkpoints, tmp_path):
  _, reference = checkpoints["bytes_tied"]
  half = transformers.GPT2LMHeadModel(reference.config)
  half.load_state_dict(reference.state_dict())
  half.to(torch.bfloat16).save_pretrained(str(tmp_path))
  file = tmp_path / hf_files.SAFETENSORS
  name = "transformer.h.0.attn.c_proj.weight"
  raw = hf_files._read_raw(file, name)
  expected = half.state_dict()[name].float().numpy()
  assert raw.dtype == np.float32 and np.array_equal(raw, expected)
  np.testing.assert_array_equal(hf_files.read_tensors(tmp_path)[name].astype(np.float32), expected)


@pytest.mark.parametrize("name", ["bytes_tied", "bpe_untied"])
def test_round_trips(checkpoints, tmp_path, name):
  directory, reference = checkpoints[name]
  vocab = reference.config.vocab_size
  tokens = tokens_for(vocab)
  # HF -> normjax -> HF: transformers loads it, same tensors, same logits
  model = hf.load_gpt2(directory)
  out = hf.save_gpt2(model, tmp_path / "back")
  again = transformers.GPT2LMHeadModel.from_pretrained(str(out)).eval()
  for key, value in reference.state_dict().items():
    if not key.endswith(".attn.bias"):
      np.testing.assert_array_equal(again.state_dict()[key].numpy(), value.numpy(), err_msg=key)
  np.testing.assert_array_equal(torch_logits(again, tokens), torch_logits(reference, tokens))
  # normjax -> HF -> normjax: the same parameters
  fresh = GPT2(
    vocab_size=vocab,
    max_len=POSITIONS,
    width=WIDTH,
    depth=LAYERS,
    num_heads=HEADS,
    norm_kwargs={"epsilon": 1e-5},
    tie_embeddings=name == "bytes_tied",
    rngs=nnx.Rngs(3),
  )
  if fresh.head is not None:
    fresh.head.bias[...] = jnp.zeros_like(fresh.head.bias[...])
  hf.save_gpt2(fresh, tmp_path / "fresh")
  restored = hf.load_gpt2(tmp_path / "fresh")
  jax.tree.map(np.testing.assert_array_equal, nnx.state(restored), nnx.state(fresh))


def frozen_fakeln(vocab=256, *, tied=True, shared=False, seed=0) -> GPT2:
  model = GPT2(
    vocab_size=vocab,
    max_len=POSITIONS,
    width=WIDTH,
    depth=LAYERS,
    num_heads=HEADS,
    norm="fakeln",
    norm_kwargs={"freeze_step": 0, "epsilon": 1e-5, "shared_attention_std": shared},
    tie_embeddings=tied,
    rngs=nnx.Rngs(seed),
  )
  rng = np.random.default_rng(seed)
  for path, param in nnx.iter_graph(model):
    if isinstance(param, nnx.Param):
      param[...] = jnp.asarray(rng.normal(size=param[...].shape) * 0.15, jnp.float32)
  if model.head is not None:
    model.head.bias[...] = jnp.zeros_like(model.head.bias[...])
  for _, norm in nnx.iter_graph(model):
    if isinstance(norm, FakeLN):
      norm.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, WIDTH), jnp.float32)
      norm.bias[...] = jnp.asarray(rng.normal(size=WIDTH) * 0.3, jnp.float32)
      norm.average_std[...] = jnp.float32(rng.uniform(1, 3))
      if norm.value_std is not None:
        norm.value_std[...] = jnp.float32(rng.uniform(1, 3))
  model.eval()
  return model


@pytest.mark.parametrize("variant", ["separate_v_std", "shared_std_untied", "folded"])
def test_ln_free_export_computes_the_frozen_fakeln_model_in_transformers(tmp_path, variant):
  model = frozen_fakeln(tied=variant != "shared_std_untied", shared=variant == "shared_std_untied")
  tokens = tokens_for(256)
  expected = np.asarray(model(tokens))
  exported = fold_norms(model) if variant == "folded" else model
  hf.save_gpt2(exported, tmp_path)
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["layer_norm_epsilon"] == hf.LN_FREE_EPSILON == 1e12
  loaded = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
  assert loaded.transformer.h[0].ln_1.eps == 1e12
  assert 1 < np.abs(expected).max() < 50
  np.testing.assert_allclose(torch_logits(loaded, tokens), expected, atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(hf.load_gpt2(tmp_path)(tokens)), expected, atol=1e-4)
  # float64 on both sides: what remains is the eps-1e12 approximation (relative var / 2e12) and
  # the float32 rounding of the stored weights (w * 1e6 / sigma, the V fold): ~1e-7
  with jax.enable_x64(True):
    wide = nnx.clone(exported)
    wide.set_attributes(dtype=jnp.float64, raise_if_not_found=False)
    exact = np.asarray(wide(tokens))
  assert exact.dtype == np.float64
  np.testing.assert_allclose(torch_logits(loaded, tokens, torch.float64), exact, atol=1e-6)


def test_models_hf_gpt2_cannot_express_are_refused(tmp_path):
  small = dict(vocab_size=256, max_len=16, width=16, depth=1, num_heads=2, rngs=nnx.Rngs(0))
  cases = [
    (GPT2(norm="rmsnorm", **small), "RMSNorm cannot be expressed by Hugging Face GPT-2"),
    (GPT2(placement="peri", **small), "Peri and Post placements cannot be expressed"),
    (GPT2(norm="crmsnorm", **small), "compressed to width - 1"),
    (GPT2(embedding_norm=True, **small), "embedding norm"),
    (GPT2(norm="fakeln", norm_kwargs={"freeze_step": 5}, **small), "still live"),
    (GPT2(norm="none", **small), "next layer ignores the input's mean"),
  ]
  untied = GPT2(tie_embeddings=False, **small)
  untied.head.bias[...] = jnp.ones_like(untied.head.bias[...])
  cases.append((untied, "non-zero bias"))
  for model, message in cases:
    with pytest.raises(ValueError, match=message):
      hf.save_gpt2(model, tmp_path / "refused")
  assert not (tmp_path / "refused").exists()


def test_configs_read_the_model_from_the_checkpoint(checkpoints):
  directory, _ = checkpoints["bytes_tied"]
  for name in ("gpt2_ln_removal", "gpt2_rmsnorm", "gpt2_crmsnorm"):
    config = tu.load_config(name, f"hf={directory}")
    assert config.init_from.to_dict() == {"hf": str(directory)}
    assert (config.model.width, config.model.depth, config.model.max_len) == (64, 2, POSITIONS)
    assert config.model.norm_kwargs.epsilon == 1e-5
    assert config.model.tie_embeddings == (name == "gpt2_ln_removal")
    tree = config.to_dict()
    for key, bad in (("model.max_len", 0), ("model.tie_embeddings", 2), ("model.vocab_size", 1.5)):
      assert f"config key {key}=" in refusal(with_value(tree, key, bad))
  bpe = checkpoints["bpe_untied"][0]
  with pytest.raises(ValueError, match="data=tokens,path=DIR"):
    tu.load_config("gpt2_ln_removal", f"hf={bpe}")
  config = tu.load_config("gpt2_ln_removal", f"hf={bpe},data=tokens,path=/corpus,aux=0.1")
  assert (config.data.vocab_size, config.data.seq_len) == (300, POSITIONS)
  assert config.batch_size * config.data.seq_len <= 2**19 and config.optimizer.learning_rate == 6e-4
  assert config.model.norm_kwargs.eot_token == 299 and not config.model.tie_embeddings
  for key in flatten(config.to_dict()):
    assert rule_for(key) is not None, key


def test_init_from_hf_checks_the_model_config(checkpoints):
  directory, _ = checkpoints["bytes_tied"]
  model = tu.load_config("gpt2_rmsnorm", f"hf={directory}").model.to_dict()
  for change, message in (
    ({"norm_kwargs": {"epsilon": 1e-6}}, "epsilon=1e-06: the checkpoint's layer_norm_epsilon"),
    ({"tie_embeddings": True}, "moves the final LayerNorm's affine into a separate head"),
    ({"norm": "batchnorm"}, "initializes layernorm, fakeln"),
    ({"placement": "peri"}, "only the pre placement"),
  ):
    with pytest.raises(ValueError, match=message):
      hf.pretrained_params(directory, {**model, **change})


def test_init_from_hf_into_a_scanned_stack(checkpoints):
  """``init_from.hf`` with ``model.scan_layers``: the same weights, the blocks stacked."""
  from normjax import run, stack_layout

  directory, _ = checkpoints["bytes_tied"]
  loaded = {}
  for scan in (False, True):
    config = tu.load_config("gpt2_rmsnorm", f"hf={directory}")
    config.model.scan_layers = scan
    abstract = jax.eval_shape(run.build(config).init_state, jax.random.key(0))
    loaded[scan] = checkpoint.load_hf_params(abstract, config.model, str(directory))["params"]
  assert stack_layout.layout(loaded[True]) == "scanned"
  unrolled = stack_layout.to_unrolled(loaded[True])
  assert jax.tree.structure(unrolled) == jax.tree.structure(loaded[False])
  for a, b in zip(jax.tree.leaves(unrolled), jax.tree.leaves(loaded[False])):
    np.testing.assert_array_equal(a, b)


def test_ln_removal_from_hf_then_export_loads_in_transformers(checkpoints, tmp_path):
  directory, reference = checkpoints["bytes_tied"]
  config = tu.load_config("gpt2_ln_removal", f"hf={directory},start=0,steps=15")
  config = tu.apply(
    config,
    {**{k: v for k, v in tu.TINY["gpt2"].items() if k.startswith(("batch", "eval", "data"))}},
  )
  config = tu.apply(config, {"schedule.warmup_steps": 1, "log_every": 5, "checkpoint_every": 15})
  train.train_and_evaluate(config, str(tmp_path / "removal"))
  from normjax.tools import ln_removal

  result = ln_removal.report(str(tmp_path / "removal"))
  assert not result["live_paths"] and result["after"] < result["before"]
  tokens = tokens_for(256, length=32)
  summary = hf_tool.export_run(str(tmp_path / "removal"), str(tmp_path / "export"))
  assert summary["ln_free"] and summary["reimport_max_abs_logit_difference"] < 1e-4
  _, finetuned = checkpoint.load_run(str(tmp_path / "removal"))
  loaded = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "export")).eval()
  assert loaded.config.eos_token_id == reference.config.eos_token_id == 255
  expected = np.asarray(finetuned(tokens))
  np.testing.assert_allclose(torch_logits(loaded, tokens), expected, atol=1e-4, rtol=0)
  assert np.abs(expected - torch_logits(reference, tokens)).max() > 1e-2  # it did train


@pytest.mark.parametrize("to", ["rmsnorm", "crmsnorm"])
def test_convert_command_writes_an_equivalent_run(checkpoints, tmp_path, to):
  directory, reference = checkpoints["bytes_tied"]
  workdir = tmp_path / to
  args = [sys.executable, "-m", "normjax.tools.convert", "--hf", str(directory), "--to", to]
  out = tu.run_cli(args + ["--workdir", str(workdir)], tu.env())
  assert out.returncode == 0, out.stderr
  assert "largest |logit difference| from the original" in out.stdout
  assert json.loads((workdir / "conversion.json").read_text())["max_abs_logit_difference"] < 1e-4
  config, model = checkpoint.load_run(str(workdir))
  assert config.model.norm == to and model.head is not None
  tokens = tokens_for(256, length=32)
  np.testing.assert_allclose(np.asarray(model(tokens)), torch_logits(reference, tokens), atol=1e-4)
  with pytest.raises(ValueError, match="already holds a run"):
    convert.convert_run(str(directory), to, str(workdir))
  message = "cannot be expressed by" if to == "rmsnorm" else "compressed to width - 1"
  with pytest.raises(ValueError, match=message):  # HF GPT-2 has LayerNorm only
    hf_tool.export_run(str(workdir), str(tmp_path / "export"))


@pytest.mark.parametrize("name", ["bytes_tied", "bpe_untied"])
def test_greedy_sampling_equals_transformers_generate(checkpoints, name):
  directory, reference = checkpoints[name]
  vocab = reference.config.vocab_size
  prompts = [[5, 9, 17, 33], [40, 41, 42, 43, 44, 45, 46], [7]]
  ours = sample.generate(hf.load_gpt2(directory), prompts, max_new_tokens=16)
  tokens, mask = sample.pad_prompts(prompts, pad_id=vocab - 1)
  with torch.no_grad():
    theirs = reference.float().generate(
      torch.as_tensor(tokens, dtype=torch.long),
      attention_mask=torch.as_tensor(mask, dtype=torch.long),
      max_new_tokens=16,
      do_sample=False,
      pad_token_id=vocab - 1,
      eos_token_id=None,
    )[:, tokens.shape[1] :]
  np.testing.assert_array_equal(ours, theirs.numpy())
  assert len(set(ours.ravel().tolist())) > 3  # not a constant sequence


def test_sample_command_on_a_checkpoint_decodes_bytes(checkpoints):
  directory, _ = checkpoints["bytes_tied"]
  args = [sys.executable, "-m", "normjax.tools.sample", "--hf", str(directory)]
  out = tu.run_cli(args + ["--prompt", "abc", "--max_new_tokens", "4", "--top_k", "5"], tu.env())
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines()[0] == "--- 'abc'" and out.stdout.splitlines()[1].startswith("abc")
