"""TensorBoard (and optionally Weights & Biases) logging of a run, beside the JSON-lines log.

Every work directory gets TensorBoard event files, so ``tensorboard --logdir=runs/`` shows all runs:

  * scalars ``train/loss``, ``train/learning_rate``, ``train/grad_norm``, ``train/steps_per_s`` every
    ``train.log_every`` steps, and ``val/<metric>`` after each validation;
  * images ``train/batch``: every ``track.image_every`` steps, the middle-of-lesion axial slice of the first
    ``track.num_images`` samples *after* synthesis, windowing and augmentation (what the model is fed),
    with organs outlined green, real tumours red and synthetic tumours yellow. The train step synthesises
    on the device and returns only scalars, so a separate small jitted function reruns
    ``step.prepare_inputs`` on those samples with the step's own keys: the train step itself is untouched
    and pays nothing on the other steps;
  * images ``val/predictions``: after each validation, a slice of a few held-out cases with the ground truth
    outlined (organ green, tumour red) over the prediction filled (organ blue, tumour magenta); read from
    the ``previews.npz`` that validation writes into its report folder.

The writer is tensorboardX (numpy, protobuf and packaging only: no TensorFlow or torch). W&B gets the same
scalars and images when ``track.wandb`` is on and the ``wandb`` package imports; when it does not, a warning
says so and the run goes on (it is an extra, not a dependency). Only the first process logs.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import struct
from typing import Iterator

import jax
import ml_collections
import numpy as np
from absl import logging

from jaxseg.synth.stage import build_synthesizer
from jaxseg.train import step as step_lib

# Outline and fill colours (RGB) of the montages.
_ORGAN_EDGE = (0, 220, 0)
_TUMOR_EDGE = (255, 30, 30)
_SYNTH_EDGE = (255, 220, 0)
_ORGAN_FILL = (40, 120, 255)
_TUMOR_FILL = (255, 0, 255)


def check_track_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field when a ``track.*`` value is unusable."""
  t = config.get("track")
  if t is None:
    return
  if int(t.image_every) < 0:
    raise ValueError(f"track.image_every={t.image_every}: must be >= 0 (0 turns batch images off)")
  if not 1 <= int(t.num_images) <= int(config.data.batch_size):
    raise ValueError(f"track.num_images={t.num_images}: must be between 1 and data.batch_size="
                     f"{config.data.batch_size}")
  if not t.wandb_project:
    raise ValueError("track.wandb_project: must not be empty")


# ----------------------------------------------------------------------------------------------- drawing


def _edges(mask: np.ndarray) -> np.ndarray:
  """The boundary pixels of a 2D mask (4-neighbourhood), one pixel wide, inside the mask."""
  m = np.pad(mask, 1)
  inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
  return mask & ~inner


def _grey(image01: np.ndarray) -> np.ndarray:
  g = (np.clip(image01, 0.0, 1.0) * 255).astype(np.uint8)
  return np.repeat(g[..., None], 3, axis=-1)


def _best_slice(label: np.ndarray, tumor_ids, organ_ids) -> int:
  """The z index with the most tumour voxels, else the most organ voxels, else the middle slice."""
  for ids in (tumor_ids, organ_ids):
    counts = np.isin(label, list(ids)).sum(axis=(0, 1))
    if counts.max() > 0:
      return int(np.argmax(counts))
  return label.shape[2] // 2


def _axial(a: np.ndarray) -> np.ndarray:
  """An [X, Y] slice in RAS+ as an image: rows anterior to posterior, patient's right on the left."""
  return np.flipud(a.T)


def overlay(image01: np.ndarray, label: np.ndarray, organs: tuple[str, ...], tumor_edge=_TUMOR_EDGE,
            pred: np.ndarray | None = None) -> np.ndarray:
  """One axial slice as RGB uint8 [H, W, 3]: ``pred`` filled (half-transparent), ``label`` outlined.

  Args:
    image01: [X, Y] intensities in [0, 1] (windowed).
    label: [X, Y] ground truth in the label space of ``organs``.
    organs: the run's organs (organ i -> 2i+1, its tumour -> 2i+2).
    tumor_edge: RGB of the tumour outline (red for real tumours, yellow for synthetic ones).
    pred: [X, Y] predicted labels, or None.
  """
  rgb = _grey(_axial(image01)).astype(np.float32)
  organ_ids = [2 * i + 1 for i in range(len(organs))]
  tumor_ids = [2 * i + 2 for i in range(len(organs))]
  if pred is not None:
    p = _axial(pred)
    for ids, colour in ((organ_ids, _ORGAN_FILL), (tumor_ids, _TUMOR_FILL)):
      m = np.isin(p, ids)
      rgb[m] = 0.5 * rgb[m] + 0.5 * np.asarray(colour, np.float32)
  lab = _axial(label)
  rgb[_edges(np.isin(lab, organ_ids))] = _ORGAN_EDGE
  rgb[_edges(np.isin(lab, tumor_ids))] = tumor_edge
  return rgb.astype(np.uint8)


def montage(tiles: list[np.ndarray], pad: int = 2) -> np.ndarray:
  """Tiles side by side (padded to the tallest) with ``pad`` black pixels between: [H, W, 3] uint8."""
  h = max(t.shape[0] for t in tiles)
  cols = []
  for t in tiles:
    cols.append(np.pad(t, ((0, h - t.shape[0]), (0, pad), (0, 0))))
  return np.concatenate(cols, axis=1)[:, :-pad] if pad else np.concatenate(cols, axis=1)


def batch_montage(x: np.ndarray, labels: np.ndarray, synth_organ: np.ndarray, organs: tuple[str, ...]) -> np.ndarray:
  """Montage of model inputs x [N, X, Y, Z(, 1)] in [0, 1] and labels [N, X, Y, Z], one slice per sample.

  Samples drawn for synthesis (``synth_organ >= 0``) get yellow tumour outlines (their tumours are synthetic).
  """
  x = np.asarray(x, np.float32)
  if x.ndim == 5:
    x = x[..., 0]
  tumor_ids = [2 * i + 2 for i in range(len(organs))]
  organ_ids = [2 * i + 1 for i in range(len(organs))]
  tiles = []
  for i in range(x.shape[0]):
    z = _best_slice(labels[i], tumor_ids, organ_ids)
    edge = _SYNTH_EDGE if int(synth_organ[i]) >= 0 else _TUMOR_EDGE
    tiles.append(overlay(x[i, :, :, z], labels[i, :, :, z], organs, edge))
  return montage(tiles)


def preview_slices(image01: np.ndarray, label: np.ndarray, pred: np.ndarray, organs: tuple[str, ...]) -> dict:
  """The slice of a validation case worth looking at (most ground-truth tumour, else organ, else middle)."""
  z = _best_slice(label, [2 * i + 2 for i in range(len(organs))], [2 * i + 1 for i in range(len(organs))])
  return {"image": np.asarray(image01[:, :, z], np.float16), "label": np.asarray(label[:, :, z], np.uint8),
          "pred": np.asarray(pred[:, :, z], np.uint8)}


def write_previews(path: str, previews: dict[str, dict]) -> None:
  """Saves {case_id: preview_slices(...)} as one npz (keys "<case>/image", "<case>/label", "<case>/pred")."""
  flat = {f"{cid}/{k}": v for cid, p in previews.items() for k, v in p.items()}
  np.savez_compressed(path, **flat)


def read_previews(path: str) -> dict[str, dict]:
  """The inverse of ``write_previews``."""
  out: dict[str, dict] = {}
  with np.load(path) as z:
    for key in z.files:
      cid, _, k = key.rpartition("/")
      out.setdefault(cid, {})[k] = z[key]
  return out


# ------------------------------------------------------------------------------------------------ logger


def _local_copy(x) -> jax.Array:
  """This process's copy of a replicated state entry, usable outside the sharded step (multi-process too)."""
  shards = getattr(x, "addressable_shards", None)
  return shards[0].data if shards else x


class RunLogger:
  """TensorBoard (+ optional W&B) for one run. A no-op on processes other than the first."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, start_step: int = 0, enabled: bool = True):
    check_track_config(config)
    track = config.get("track") or ml_collections.ConfigDict(
        {"tensorboard": True, "image_every": 0, "num_images": 1, "wandb": False, "wandb_project": "jaxseg"})
    self.config = config
    self.organs = tuple(config.data.organs)
    self.image_every = int(track.image_every)
    self.num_images = int(track.num_images)
    self.enabled = enabled
    self.writer = None
    self.wandb = None
    self._preview_fn = None
    if not enabled:
      return
    if track.tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      # purge_step: after a resume, TensorBoard hides the events the killed run wrote past the checkpoint.
      self.writer = SummaryWriter(workdir, purge_step=start_step + 1 if start_step else None, flush_secs=30)
    if track.wandb:
      try:
        import wandb  # pylint: disable=import-outside-toplevel
      except ImportError:
        logging.warning("track.wandb is on but the wandb package is not installed (pip install wandb); "
                        "logging to TensorBoard only")
      else:
        # One W&B run per work directory: a resumed run continues it.
        run_id = hashlib.sha1(os.path.abspath(workdir).encode()).hexdigest()[:16]
        self.wandb = wandb
        wandb.init(project=track.wandb_project, name=os.path.basename(os.path.normpath(workdir)), id=run_id,
                   dir=workdir, resume="allow", config=config.to_dict())

  def scalars(self, step: int, metrics: dict, prefix: str = "train") -> None:
    """Logs every finite float of ``metrics`` as ``<prefix>/<name>``."""
    if not self.enabled:
      return
    vals = {f"{prefix}/{k}": float(v) for k, v in metrics.items()
            if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)
            and np.isfinite(float(v))}
    if self.writer is not None:
      for tag, v in vals.items():
        self.writer.add_scalar(tag, v, step)
    if self.wandb is not None and vals:
      self.wandb.log(vals, step=step)

  def image(self, tag: str, rgb: np.ndarray, step: int) -> None:
    if self.writer is not None:
      self.writer.add_image(tag, rgb, step, dataformats="HWC")
    if self.wandb is not None:
      self.wandb.log({tag: self.wandb.Image(rgb)}, step=step)

  def train_images(self, step: int, state: dict, local_batch: dict) -> None:
    """Every ``image_every`` steps: the montage of what the train step at ``step`` feeds the model.

    Call it before the step (the step donates ``state``). It replays ``prepare_inputs`` with the step's
    per-sample keys (from the state's RNG and step counter) on the first samples of this process's batch,
    which on the first process are the first samples of the global batch, so the image shows exactly
    the synthetic tumours and augmentation that the step trains on.
    """
    if not self.enabled or not self.image_every or step % self.image_every:
      return
    n = min(self.num_images, int(local_batch["image"].shape[0]))
    global_batch = int(self.config.data.batch_size)
    if self._preview_fn is None:
      config = self.config
      synthesizer = build_synthesizer(config)

      def fn(rng, step_count, batch, synth_params):
        keys = step_lib.sample_keys(rng, step_count, global_batch)[: batch["image"].shape[0]]
        return step_lib.prepare_inputs(config, batch, keys, synthesizer, synth_params)

      self._preview_fn = jax.jit(fn)
    small = {k: np.asarray(v)[:n] for k, v in local_batch.items()}
    synth_params = jax.tree.map(_local_copy, state["synth_params"])
    x, labels = jax.device_get(self._preview_fn(_local_copy(state["rng"]), _local_copy(state["step"]), small,
                                                synth_params))
    self.image("train/batch", batch_montage(x, labels, small["synth_organ"], self.organs), step)

  def validation(self, step: int, summary: dict) -> None:
    """Validation metrics as ``val/<metric>`` scalars and the prediction overlays of its previews."""
    if not self.enabled or not summary:
      return
    self.scalars(step, {k: v for k, v in summary.items() if k not in ("checkpoint_step", "step")}, prefix="val")
    path = os.path.join(summary.get("eval_dir", ""), "previews.npz")
    if summary.get("eval_dir") and os.path.exists(path):
      previews = read_previews(path)
      tiles = [overlay(p["image"].astype(np.float32), p["label"], self.organs, pred=p["pred"])
               for _, p in sorted(previews.items())]
      if tiles:
        self.image("val/predictions", montage(tiles), step)

  def flush(self) -> None:
    if self.writer is not None:
      self.writer.flush()

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
      self.writer = None
    if self.wandb is not None:
      self.wandb.finish()
      self.wandb = None


# ------------------------------------------------------------------------------------------------ reader


def _records(path: str) -> Iterator[bytes]:
  """The payloads of a TFRecord file (length, its CRC, data, its CRC); a truncated tail is ignored."""
  with open(path, "rb") as f:
    while True:
      head = f.read(12)
      if len(head) < 12:
        return
      (n,) = struct.unpack("<Q", head[:8])
      data = f.read(n)
      if len(data) < n or len(f.read(4)) < 4:
        return
      yield data


def read_events(logdir: str) -> dict[str, list]:
  """Everything the event files directly in ``logdir`` hold: {tag: [(step, value)]} in file order.

  A scalar's value is a float; an image's is its decoded RGB array [H, W, 3] uint8. For tests and
  scripts that want the numbers without a TensorBoard server.
  """
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  out: dict[str, list] = {}
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    for data in _records(path):
      event = event_pb2.Event()
      event.ParseFromString(data)
      if not event.HasField("summary"):
        continue
      for v in event.summary.value:
        kind = v.WhichOneof("value")
        if kind == "image":
          from PIL import Image  # pylint: disable=import-outside-toplevel
          value = np.asarray(Image.open(io.BytesIO(v.image.encoded_image_string)).convert("RGB"))
        elif kind == "simple_value":
          value = float(v.simple_value)
        else:
          continue
        out.setdefault(v.tag, []).append((int(event.step), value))
  return out
