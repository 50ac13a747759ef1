"""TensorBoard logging: a tiny production training run (liver-only and kidney-only annotated cases mixed,
so it is also the partial-label training run) leaves event files with the scalars and both image kinds."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from jaxseg.train import tb_log

sys.path.insert(0, os.path.dirname(__file__))
from test_partial_labels import ORGANS, _case  # noqa: E402
from tiny_config import tiny_config  # noqa: E402


def test_tiny_run_writes_scalars_and_images(tmp_path):
  from jaxseg.train.loop import train_and_evaluate  # pylint: disable=import-outside-toplevel
  root = str(tmp_path / "data")
  _case(root, "L_tumor", ["liver", "liver_tumor"])
  _case(root, "L_tumor2", ["liver", "liver_tumor"])
  _case(root, "L_control", ["liver", "liver_tumor_empty"])
  _case(root, "K_control", ["kidney_left", "kidney_tumor_empty"])
  c = tiny_config()
  c.data.layout, c.data.root, c.data.cache_dir = "atlas", root, str(tmp_path / "cache")
  c.data.organs = ORGANS
  c.data.spacing = (2.0, 2.0, 2.0)
  c.data.batch_size = 2
  c.data.num_val = 1
  c.data.preprocess_workers = 1
  c.train.num_steps = 2
  c.train.log_every = 1
  c.train.checkpoint_every = 2
  c.track.image_every = 2
  c.eval.bootstrap = 10
  workdir = str(tmp_path / "run")
  summary = train_and_evaluate(c, workdir)
  assert np.isfinite(summary["loss"])

  events = tb_log.read_events(workdir)
  for tag in ("train/loss", "train/learning_rate", "train/grad_norm"):
    assert [s for s, _ in events[tag]] == [1, 2], tag
  assert [s for s, _ in events["train/steps_per_s"]] == [2]  # undefined (NaN) after the first step
  assert events["val/tumor_dsc"][0][0] == 2 and "val/organ_dsc" in events
  (step, batch_img), = events["train/batch"]
  assert step == 2 and batch_img.shape == (16, 2 * 16 + 2, 3)  # two 16x16 slices side by side
  (step, val_img), = events["val/predictions"]
  assert step == 2 and val_img.ndim == 3 and val_img.shape[2] == 3
  # Outlines are drawn: the colours of organ/tumour edges are present.
  colours = {tuple(p) for p in batch_img.reshape(-1, 3)}
  assert (0, 220, 0) in colours
  assert os.path.exists(os.path.join(summary["eval_dir"], "previews.npz"))
  assert os.path.exists(os.path.join(workdir, "metrics.jsonl"))  # the JSON-lines log stays


def test_montage_marks_synthetic_tumours_yellow():
  x = np.zeros((2, 8, 8, 4), np.float32)
  labels = np.zeros((2, 8, 8, 4), np.uint8)
  labels[:, 2:6, 2:6, 1] = 1
  labels[:, 3:5, 3:5, 1] = 2
  img = tb_log.batch_montage(x, labels, np.asarray([-1, 0]), ("liver",))
  left, right = img[:, :8], img[:, 10:]
  assert (left == (255, 30, 30)).all(-1).any() and not (left == (255, 220, 0)).all(-1).any()
  assert (right == (255, 220, 0)).all(-1).any()


def test_bad_track_values_name_the_field():
  c = tiny_config()
  c.track.num_images = 9
  with pytest.raises(ValueError, match="track.num_images"):
    tb_log.check_track_config(c)
  c = tiny_config()
  c.track.image_every = -1
  with pytest.raises(ValueError, match="track.image_every"):
    tb_log.check_track_config(c)


def test_wandb_off_by_default_and_missing_package_only_warns(tmp_path, monkeypatch):
  c = tiny_config()
  assert c.track.wandb is False
  c.track.wandb = True
  monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
  logger = tb_log.RunLogger(str(tmp_path), c)
  assert logger.wandb is None and logger.writer is not None
  logger.scalars(1, {"loss": 0.5, "bad": float("nan")})
  logger.close()
  assert tb_log.read_events(str(tmp_path)) == {"train/loss": [(1, 0.5)]}
