"""The training input pipeline: a Grain chain from the memory-mapped cache to process-local patch batches.

```
units (tumour cases; (control case, organ) pairs) -> shuffle(seed) -> repeat   (two streams)
  -> mix(weights 1 - synth_fraction, synth_fraction) -> random_map(sample a patch)
  -> [process_index::process_count] -> to_iter_dataset -> mp_prefetch(num_workers) -> batch
```
Each patch is drawn with the per-element generator Grain derives from (seed, global index), and batching
comes after mp_prefetch, so the same seed gives the same batches for any worker count. The host only
reads and crops: intensity windowing, synthesis and augmentation happen on the device.

Patches from tumour cases are centred (with jitter) on a tumour voxel with probability ``fg_oversample``
(nnU-Net: 0.33), otherwise on a voxel of one of the organs with probability ``organ_centred`` (the
synthetic-tumour reference crops scans to the organ; 0 is nnU-Net's uniform placement), else uniformly.
Patches from control cases follow the same rule, the organ the synthesizer may place a tumour in
(``synth_organ``) standing for the tumour: so the real and real+synth arms of a study see the same
anatomy, and a run on control cases alone still sees the abdomen away from that organ (a patch without
organ voxels gets no synthetic tumour). In the synthesizer's reference mode, control patches are cropped
by the published pos 1 : neg 1 rule with the tumour sites drawn on the whole case
(jaxseg/synth/placement.py). Borders are padded with -1024 HU, label 0.
Arrays are memory-mapped and only a bounded number of cases stay open per worker, so memory stays flat.
"""

from __future__ import annotations

import collections
import dataclasses

import grain
import numpy as np

from jaxseg import labels as label_space
from jaxseg.data import cache
from jaxseg.data.split import first_tumor_cases
from jaxseg.synth import batch as synth_batch, spec as spec_lib
from jaxseg.synth import placement

PAD_HU = -1024
_OPEN_CASES = 16  # memory-mapped cases kept open per process (bounded: flat memory over long runs)


class _CaseCache:
  """A small LRU of open memory-mapped cases (per process; rebuilt empty in each worker after pickling)."""

  def __init__(self, cache_dir: str):
    self.cache_dir = cache_dir
    self._open: collections.OrderedDict = collections.OrderedDict()

  def __getstate__(self):
    return {"cache_dir": self.cache_dir}

  def __setstate__(self, state):
    self.__init__(state["cache_dir"])

  def get(self, case_id: str):
    if case_id in self._open:
      self._open.move_to_end(case_id)
      return self._open[case_id]
    image, label, meta = cache.load_case(self.cache_dir, case_id, mmap=True)
    entry = (image, label, cache.load_locations(self.cache_dir, case_id, meta), np.asarray(meta["spacing"], np.float32))
    self._open[case_id] = entry
    if len(self._open) > _OPEN_CASES:
      self._open.popitem(last=False)
    return entry


def crop(volume: np.ndarray, start, size, pad_value) -> np.ndarray:
  """Copies volume[start:start+size] ([X, Y, Z]), padding with ``pad_value`` where it leaves the volume."""
  out = np.full(tuple(size), pad_value, dtype=volume.dtype)
  src, dst = [], []
  for s, n, d in zip(start, size, volume.shape):
    a, b = max(s, 0), min(s + n, d)
    if b <= a:
      return out
    src.append(slice(a, b))
    dst.append(slice(a - s, b - s))
  out[tuple(dst)] = volume[tuple(src)]
  return out


@dataclasses.dataclass
class PatchSampler:
  """Grain random map: (case_id, synth_organ) -> one patch dict (see ``make_train_loader``).

  ``synth_specs`` (one static profile spec per organ, from config.synth) switches on the synthesis fields;
  ``synth_mode`` "reference" crops control patches by the reference's pos/neg rule and draws the tumour
  sites on the whole case (jaxseg/synth/placement.py); "patch" centres control patches on an organ voxel
  and leaves the sites to the device.
  """
  cache_dir: str
  patch_size: tuple[int, int, int]
  fg_oversample: float
  organs: tuple[str, ...]
  organ_centred: float = 0.0
  synth_mode: str = "patch"
  synth_specs: tuple | None = None
  synth_min_spacing_mm: float = 0.0

  def __post_init__(self):
    self._cases = _CaseCache(self.cache_dir)
    self._tumor_labels = [label_space.tumor_label(self.organs, o) for o in self.organs]
    self._organ_labels = [label_space.organ_label(self.organs, o) for o in self.organs]
    self._slots = max((sum(g.slots for g in sp.groups) for sp in self.synth_specs), default=0) \
        if self.synth_specs else 0

  def _sites(self, label, pts, synth_organ, spacing, start, rng) -> dict:
    """The batch's synthesis fields: sites in patch coordinates (zeros for non-control samples)."""
    centres = np.zeros((self._slots, 3), np.int32)
    ok = np.zeros((self._slots,), np.uint8)
    if synth_organ >= 0 and self.synth_mode == "reference":
      spec = self.synth_specs[synth_organ]
      c, k = placement.draw_sites(label, pts, self._organ_labels[synth_organ], spacing, spec, rng)
      centres[:len(c)] = c - np.asarray(start, np.int64)
      ok[:len(k)] = k
    return {"synth_centers": centres, "synth_center_ok": ok}

  def __call__(self, unit, rng: np.random.Generator) -> dict:
    case_id, synth_organ = unit[0], int(unit[1])
    image, label, locs, spacing = self._cases.get(case_id)
    size = np.asarray(self.patch_size)
    shape = np.asarray(label.shape)
    pts = None
    if self.synth_specs and synth_organ >= 0:
      spec_lib.check_spacing(spacing, self.synth_min_spacing_mm, where=f"{self.cache_dir}: case {case_id}")
    if synth_organ >= 0:
      pts = locs.get(label_space.organ_label(self.organs, self.organs[synth_organ]))
      if self.synth_mode == "reference":
        centre = placement.crop_centre(label, pts, self._organ_labels[synth_organ], size, rng)
      else:
        # A control case is sampled like a tumour case, the organ that may receive a synthetic tumour
        # standing for the tumour: without the uniform and other-organ patches, a run on controls alone
        # (N = 0) would never see the abdomen away from that organ. A patch without organ gets no tumour.
        centre = self._centre(locs, [pts] if pts is not None and len(pts) else [], shape, size, rng, jitter=False)
    else:
      fg = [locs[c] for c in self._tumor_labels if c in locs and len(locs[c])]
      centre = self._centre(locs, fg, shape, size, rng, jitter=True)
    start = centre - size // 2
    out = {
        "image": crop(image, start, size, np.int16(PAD_HU)),
        "label": crop(label, start, size, np.uint8(0)),
        "synth_organ": np.int32(synth_organ),
        "spacing": spacing,
        "annotated": self._annotated(case_id),  # partial labels: uint8 [num_classes]
    }
    if self.synth_specs:
      out.update(self._sites(label, pts, synth_organ, spacing, start, rng))
    return out

  def _centre(self, locs, targets: list, shape, size, rng, jitter: bool) -> np.ndarray:
    """A patch centre: on a voxel of ``targets`` (the tumour classes' voxel lists; for a control case its
    synthesis organ's) with probability ``fg_oversample``, shifted by up to a quarter patch if ``jitter``;
    else on a voxel of one of the organs with probability ``organ_centred``; else uniform in the case."""
    if targets and rng.random() < self.fg_oversample:
      pts = targets[rng.integers(len(targets))]
      offset = rng.integers(-(size // 4), size // 4 + 1) if jitter else 0
      return pts[rng.integers(len(pts))].astype(np.int64) + offset
    if self.organ_centred > 0 and rng.random() < self.organ_centred:
      # The organ's surroundings, tumour or not: where false positives have to be unlearnt.
      pts = [locs[c] for c in self._organ_labels if c in locs and len(locs[c])] or targets
      pts = pts[rng.integers(len(pts))] if pts else None
      return pts[rng.integers(len(pts))].astype(np.int64) if pts is not None else rng.integers(0, shape)
    return rng.integers(0, shape)

  def _annotated(self, case_id: str) -> np.ndarray:
    """The case's annotated-class mask (cache.annotated_mask), read once per case and process."""
    memo = self.__dict__.setdefault("_annotated_memo", {})
    if case_id not in memo:
      memo[case_id] = cache.annotated_mask(cache.load_meta(self.cache_dir, case_id), self.organs)
    return memo[case_id]


class _BlockShard(grain.MapDataset):
  """Process ``index`` of ``count``: blocks ``index, index + count, ...`` of ``block`` elements.

  With block = batch_size / count, the local batches of processes 0..count-1, concatenated in process
  order, are exactly the global batch one process would draw, so results do not depend on the process
  count (ds[index::count] gives the same samples per step in another order, and per-sample keys follow
  the position in the global batch).
  """

  def __init__(self, parent: grain.MapDataset, block: int, index: int, count: int):
    super().__init__(parent)
    self._block, self._index, self._count = block, index, count

  def __len__(self) -> int:
    return len(self._parent) // (self._block * self._count) * self._block

  def __getitem__(self, i):
    if isinstance(i, slice):
      return self.slice(i)
    q, r = divmod(i, self._block)
    return self._parent[(q * self._count + self._index) * self._block + r]

  def __str__(self) -> str:
    return f"BlockShard(block={self._block}, index={self._index}, count={self._count})"


def sampling_units(cases: list[dict], train_ids: list[str], organs) -> tuple[list, list]:
  """(tumour units [(case_id, -1)], control units [(case_id, organ index)]) of the train split."""
  by_id = {c["case_id"]: c for c in cases}
  real, control = [], []
  for cid in sorted(train_ids):
    status = by_id[cid]["organs"]
    if any(status.get(o) == "tumor" for o in organs):
      real.append((cid, -1))
    control += [(cid, i) for i, o in enumerate(organs) if status.get(o) == "control"]
  return real, control


def synth_sampler_args(organs: tuple[str, ...], synth_cfg) -> dict:
  """PatchSampler arguments from config.synth (mode, one static profile spec per organ, min spacing)."""
  if synth_cfg is None:
    return {}
  mode = str(synth_cfg.mode)
  spec_lib.mode_settings(mode)
  return dict(synth_mode=mode, synth_specs=tuple(synth_batch.organ_specs(organs, synth_cfg)),
              synth_min_spacing_mm=float(synth_cfg.min_spacing_mm))


def make_dataset(data_cfg, cache_dir: str, train_ids: list[str], seed: int, process_index: int = 0,
                 process_count: int = 1, synth_cfg=None) -> grain.IterDataset:
  """The Grain IterDataset of process-local batches (see ``make_train_loader``)."""
  organs = label_space.check_organs(data_cfg.organs)
  if data_cfg.batch_size % process_count:
    raise ValueError(f"data.batch_size={data_cfg.batch_size} is not divisible by {process_count} processes")
  cases = cache.list_cases(cache_dir)
  missing = set(train_ids) - {c["case_id"] for c in cases}
  if missing:
    raise ValueError(f"{cache_dir}: train cases not in the cache: {sorted(missing)[:5]}")
  train_ids = first_tumor_cases(cases, train_ids, int(data_cfg.num_real_tumor_cases), int(data_cfg.split_seed),
                                organs)
  real, control = sampling_units(cases, train_ids, organs)
  f = float(data_cfg.synth_fraction)
  streams, weights = [], []
  if real and f < 1.0:
    streams.append(grain.MapDataset.source(real).shuffle(seed=seed).repeat())
    weights.append(1.0 - f)
  if control and f > 0.0:
    streams.append(grain.MapDataset.source(control).shuffle(seed=seed + 1).repeat())
    weights.append(f)
  if not streams:  # e.g. synth_fraction 1 without controls: fall back to whatever exists
    streams = [grain.MapDataset.source(real or control).shuffle(seed=seed).repeat()]
    weights = [1.0]
  if not (real or control):
    raise ValueError(f"{cache_dir}: no tumour or control case for organs {organs} among {len(train_ids)} cases")
  ds = streams[0] if len(streams) == 1 else grain.MapDataset.mix(streams, weights)
  sampler = PatchSampler(cache_dir, tuple(int(p) for p in data_cfg.patch_size), float(data_cfg.fg_oversample),
                         organs, float(data_cfg.organ_centred), **synth_sampler_args(organs, synth_cfg))
  ds = ds.random_map(sampler, seed=seed)
  ds = _BlockShard(ds, data_cfg.batch_size // process_count, process_index, process_count)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=max(2, int(data_cfg.prefetch))))
  if int(data_cfg.num_workers) > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(data_cfg.num_workers),
                                                     per_worker_buffer_size=max(1, int(data_cfg.prefetch))))
  return it.batch(data_cfg.batch_size // process_count, drop_remainder=True)


def make_train_loader(data_cfg, cache_dir: str, train_ids: list[str], seed: int, process_index: int = 0,
                      process_count: int = 1, synth_cfg=None) -> grain.DatasetIterator:
  """An infinite, checkpointable iterator of process-local training batches.

  Applies ``data_cfg.num_real_tumor_cases`` to ``train_ids`` (first N tumour cases, nested in N).

  Args:
    data_cfg: config.data (organs, patch_size, batch_size, fg_oversample, synth_fraction,
      num_real_tumor_cases, split_seed, num_workers, prefetch).
    cache_dir: the preprocessed cache.
    train_ids: training case ids.
    seed: shuffling and sampling seed.
    process_index: this JAX process.
    process_count: number of JAX processes.
    synth_cfg: config.synth, or None. Given, every sample also carries the synthesis fields below, and
      with ``synth_cfg.mode == "reference"`` control patches are cropped by the reference's pos/neg rule
      and their tumour sites drawn on the whole case (jaxseg/synth/placement.py); the crop rule follows the
      mode whether synthesis is enabled or not, so real-only and real+synth arms see the same patches.

  Returns:
    A Grain DatasetIterator (get_state/set_state; save with grain.checkpoint.CheckpointSave) yielding
    {"image": int16 [B, X, Y, Z], "label": uint8 [B, X, Y, Z], "synth_organ": int32 [B],
     "spacing": float32 [B, 3], "annotated": uint8 [B, num_classes]} with B = batch_size / process_count, plus with ``synth_cfg``
    "synth_centers": int32 [B, S, 3] (tumour sites in patch coordinates, possibly outside the patch) and
    "synth_center_ok": uint8 [B, S] (zeros for non-control samples and in patch mode), S the most site slots
    of any organ's profile. Close it (``it.close()`` when it has one) before exit when workers are used.
  """
  return iter(make_dataset(data_cfg, cache_dir, train_ids, seed, process_index, process_count, synth_cfg))
