import dataclasses
import functools
import os
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cyclestar_jax import checkpoint, config
from cyclestar_jax import train_step as ts


@pytest.fixture(scope="module")
def smoke_state():
  cfg = config.get_config("smoke")
  return cfg, ts.create_train_state(cfg, jax.random.key(0))


def _at_step(state, step):
  """A distinct state per step: every parameter shifted by the step number."""
  return state.replace(step=jnp.asarray(step, jnp.int32),
                       gen_params=jax.tree.map(lambda x: x + step, state.gen_params))


def _target(cfg):
  return jax.eval_shape(functools.partial(ts.create_train_state, cfg), jax.random.key(0))


def test_round_trip_into_eval_shape_target(tmp_path, smoke_state):
  cfg, state = smoke_state
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", cfg, max_to_keep=2)
  saved = _at_step(state, 7)
  ckpt.save(saved, data_position=7, extra={"synth": "a.h5"})
  restored, meta = ckpt.restore_latest(_target(cfg))
  assert meta["step"] == 7 and meta["data_position"] == 7 and meta["extra"] == {"synth": "a.h5"}
  assert meta["config"]["name"] == "smoke"
  assert jax.tree.structure(restored) == jax.tree.structure(saved)
  chex.assert_trees_all_equal(restored, saved, strict=True)  # values, shapes and dtypes
  ckpt.close()


def test_keeps_last_n_and_skips_corrupt_incomplete_and_foreign(tmp_path, smoke_state):
  cfg, state = smoke_state
  directory = tmp_path / "ckpt"
  ckpt = checkpoint.Checkpointer(directory, cfg, max_to_keep=2)
  for step in (1, 2, 3, 4):
    ckpt.save(_at_step(state, step))
  assert ckpt.steps() == [3, 4]
  ckpt.close()

  # Corrupt step 4: flip bytes in every stored array file.
  for root, _, files in os.walk(directory / "4" / "state"):
    for f in files:
      path = os.path.join(root, f)
      if os.path.getsize(path) > 64 and "/d" in root:
        with open(path, "r+b") as fh:
          fh.seek(40)
          fh.write(b"\xff" * 16)
  # An interrupted write (a temporary directory orbax never renamed) and a foreign directory.
  os.makedirs(directory / "9.orbax-checkpoint-tmp-1234" / "state")
  os.makedirs(directory / "8" / "state")
  (directory / "8" / "state" / "model.pth").write_bytes(b"not an orbax checkpoint")

  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ckpt = checkpoint.Checkpointer(directory, cfg, max_to_keep=2)
    restored, meta = ckpt.restore_latest(_target(cfg))
  messages = " | ".join(str(w.message) for w in caught)
  assert meta["step"] == 3 and int(restored.step) == 3
  np.testing.assert_array_equal(restored.gen_params["dec_obs"]["out"]["bias"],
                                _at_step(state, 3).gen_params["dec_obs"]["out"]["bias"])
  assert "incomplete checkpoint" in messages and "9.orbax-checkpoint-tmp" in messages
  # The corrupt step is skipped, named with why in `skipped`, and the fall-back is one line.
  assert 4 in ckpt.skipped and "using the older step 3" in messages
  assert 9 not in ckpt.steps()
  ckpt.close()


def test_foreign_architecture_is_refused_with_the_differing_field(tmp_path, smoke_state):
  cfg, state = smoke_state
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", cfg)
  ckpt.save(_at_step(state, 5))
  ckpt.close()
  other = dataclasses.replace(cfg, zsh_filters=cfg.zsh_filters + 1)
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", other)
  with pytest.raises(checkpoint.CheckpointError, match="zsh_filters"):
    ckpt.restore(5, _target(other))
  assert ckpt.restore_latest(_target(other)) is None
  assert "another architecture" in ckpt.skipped[5]
  ckpt.close()
  # Training hyper-parameters may differ on resume (same shapes).
  relaxed = dataclasses.replace(cfg, lambda_adv=2.0, name="smoke_b")
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", relaxed)
  assert ckpt.restore_latest(_target(relaxed))[1]["step"] == 5
  ckpt.close()


def test_generator_npz_round_trip_and_load_cycle_model_reads_it(tmp_path, smoke_state):
  from cyclestar_jax import networks
  from cyclestar_jax.checkpoint import CycleModel

  cfg, state = smoke_state
  nets = networks.make_networks(cfg)
  model = CycleModel(nets, state.gen_ema)
  path = checkpoint.save_generator_npz(tmp_path / "g.npz", model, {"step": 3})
  assert checkpoint.generator_metadata(path) == {"step": 3}
  for back in (checkpoint.load_generator_npz(path), checkpoint.load_cycle_model(path)):
    assert back.nets.cfg == cfg and back.source == str(path)
    chex.assert_trees_all_equal(back.gen_params, model.gen_params)
  with np.load(path) as z:  # the generator only, in float32
    assert not any("critic" in k for k in z.files)
    assert all(z[k].dtype == np.float32 for k in z.files if k.startswith("gen/"))
  # not a generator file, and a file whose arrays do not fit its config: one clear line each
  np.savez(tmp_path / "other.npz", w=np.zeros(3))
  with pytest.raises(ValueError, match="other.npz: not a cyclestar_jax.generator/1 file"):
    checkpoint.load_cycle_model(tmp_path / "other.npz")
  (tmp_path / "text.npz").write_text("hello")
  with pytest.raises(ValueError, match="text.npz: not a generator .npz file"):
    checkpoint.load_cycle_model(tmp_path / "text.npz")
  with np.load(path) as z:
    arrays = {k: z[k] for k in z.files}
  key = next(k for k in arrays if k.startswith("gen/dec_obs"))
  arrays[key] = np.zeros((2, 2), np.float32)
  np.savez(tmp_path / "bad.npz", **arrays)
  with pytest.raises(ValueError, match=r"bad.npz: arrays that do not fit config 'smoke'"):
    checkpoint.load_cycle_model(tmp_path / "bad.npz")
