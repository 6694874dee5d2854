import dataclasses
import functools
import os
import warnings

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
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(saved), strict=True):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
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
  assert f"{directory}/4" in messages  # corrupt: skipped with its path
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
  with pytest.warns(UserWarning, match="another architecture"):
    assert ckpt.restore_latest(_target(other)) is None
  ckpt.close()
  # Training hyper-parameters may differ on resume (same shapes).
  relaxed = dataclasses.replace(cfg, lambda_adv=2.0, name="smoke_b")
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", relaxed)
  assert ckpt.restore_latest(_target(relaxed))[1]["step"] == 5
  ckpt.close()
