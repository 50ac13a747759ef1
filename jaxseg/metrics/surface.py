"""Surface metrics (NSD, HD95) on the surface-element definition of DeepMind's surface-distance package.

Published tumour and organ evaluations (the MSD challenge, the AbdomenAtlas and synthetic-tumour papers)
report NSD and HD95 from that package, so jaxseg follows its definition exactly rather than counting
boundary voxels:
  * surface points live on the corners of the voxel grid: every 2x2x2 cube of voxels gets an 8-bit
    neighbour code; the cubes that are neither empty nor full hold surface;
  * each such cube carries the area (in mm^2, from the voxel spacing) of its marching-cubes surface,
    the surface element ("surfel");
  * distances between the two surfaces are Euclidean distance transforms over the corner grid with the
    voxel spacing, and every distance is weighted by its surfel's area.

The 256 areas are not copied from a table: ``surfel_normals`` builds each cube's marching-cubes polygons
(vertices at edge midpoints; on an ambiguous face the corners of the smaller set, and for four
corners the inside ones, are cut off) and fans each polygon from the vertex that gives the largest area.
This reproduces the package's table for all 256 codes at any spacing (checked to 1e-9 at three
anisotropic spacings against it).
"""

from __future__ import annotations

import functools
import itertools
from typing import Sequence

import numpy as np
from scipy import ndimage

_CORNERS = tuple(itertools.product((0, 1), repeat=3))
# Bit of corner (i, j, k) of a cube: the voxel at offset (i, j, k) from the cube's first corner.
_BIT = {c: 1 << (7 - (4 * c[0] + 2 * c[1] + c[2])) for c in _CORNERS}
_EDGES = tuple((a, b) for a in _CORNERS for b in _CORNERS
               if a < b and sum(x != y for x, y in zip(a, b)) == 1)


def _faces() -> list[list[tuple[int, int, int]]]:
  faces = []
  for axis in range(3):
    others = [a for a in range(3) if a != axis]
    for v in (0, 1):
      face = []
      for p, q in ((0, 0), (0, 1), (1, 1), (1, 0)):  # cyclic order around the face
        c = [0, 0, 0]
        c[axis], c[others[0]], c[others[1]] = v, p, q
        face.append(tuple(c))
      faces.append(face)
  return faces


_FACES = _faces()


def _polygons(inside: set) -> list[list[tuple]]:
  """Marching-cubes polygons of one cube as loops of crossed edges."""
  active = [e for e in _EDGES if (e[0] in inside) != (e[1] in inside)]
  links = {e: [] for e in active}
  for face in _FACES:
    face_edges = [tuple(sorted((face[t], face[(t + 1) % 4]))) for t in range(4)]
    crossed = [e for e in face_edges if e in links]
    if len(crossed) == 2:
      pairs = [tuple(crossed)]
    elif len(crossed) == 4:  # ambiguous face: two diagonal corners inside
      cut = [c for c in face if (c in inside) == (len(inside) <= 4)]
      pairs = [tuple(e for e in crossed if c in e) for c in cut]
    else:
      pairs = []
    for a, b in pairs:
      links[a].append(b)
      links[b].append(a)
  loops, seen = [], set()
  for start in active:
    if start in seen:
      continue
    loop, prev, cur = [start], None, start
    seen.add(start)
    while True:
      nxt = [n for n in links[cur] if n != prev and n not in seen]
      if not nxt:
        break
      prev, cur = cur, nxt[0]
      loop.append(cur)
      seen.add(cur)
    loops.append(loop)
  return loops


@functools.lru_cache(maxsize=None)
def surfel_normals() -> tuple[np.ndarray, ...]:
  """Per neighbour code (0..255), the area vectors [T, 3] of its surface triangles in voxel units."""
  table = []
  for code in range(256):
    inside = {c for c in _CORNERS if code & _BIT[c]}
    normals = []
    if 0 < len(inside) < 8:
      for loop in _polygons(inside):
        pts = [(np.asarray(a, float) + np.asarray(b, float)) / 2.0 for a, b in loop]
        fans = []
        for s in range(len(pts)):
          p = pts[s:] + pts[:s]
          fans.append([0.5 * np.cross(p[t] - p[0], p[t + 1] - p[0]) for t in range(1, len(p) - 1)])
        normals += max(fans, key=lambda f: sum(np.linalg.norm(n) for n in f))
    table.append(np.asarray(normals, np.float64).reshape(-1, 3))
  return tuple(table)


def surfel_areas(spacing: Sequence[float]) -> np.ndarray:
  """Surface area in mm^2 of each of the 256 neighbour codes at voxel ``spacing`` (sx, sy, sz).

  Returns:
    float64 [256].
  """
  sx, sy, sz = (float(s) for s in spacing)
  scale = np.array([sy * sz, sx * sz, sx * sy])
  return np.array([np.linalg.norm(n * scale, axis=-1).sum() for n in surfel_normals()])


def _neighbour_codes(mask: np.ndarray) -> np.ndarray:
  """8-bit code of every 2x2x2 cube of ``mask`` [X, Y, Z] padded by one voxel: [X + 1, Y + 1, Z + 1]."""
  m = np.pad(mask.astype(np.uint8), 1)
  codes = np.zeros(tuple(s - 1 for s in m.shape), np.uint8)
  for (i, j, k), bit in _BIT.items():
    codes |= m[i:i + codes.shape[0], j:j + codes.shape[1], k:k + codes.shape[2]] * np.uint8(bit)
  return codes


def surface_distances(gt: np.ndarray, pred: np.ndarray, spacing: Sequence[float]) -> dict:
  """Distances from every surfel of one surface to the other surface, with the surfels' areas.

  Args:
    gt: bool [X, Y, Z] ground truth mask.
    pred: bool [X, Y, Z] predicted mask.
    spacing: voxel spacing (sx, sy, sz) in mm.

  Returns:
    dict with float64 arrays "distances_gt_to_pred", "areas_gt", "distances_pred_to_gt", "areas_pred",
    each sorted by distance. Empty arrays for an empty mask; distances are inf when the other mask is
    empty.
  """
  gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
  if gt.shape != pred.shape or gt.ndim != 3:
    raise ValueError(f"surface distances: masks must be 3D of one shape, got {gt.shape} and {pred.shape}")
  empty = np.zeros(0)
  union = gt | pred
  if not union.any():
    return {"distances_gt_to_pred": empty, "areas_gt": empty, "distances_pred_to_gt": empty,
            "areas_pred": empty}
  box = ndimage.find_objects(union.astype(np.uint8))[0]
  areas = surfel_areas(spacing)
  codes = {name: _neighbour_codes(m[box]) for name, m in (("gt", gt), ("pred", pred))}
  borders = {k: (c != 0) & (c != 255) for k, c in codes.items()}
  dist = {}
  for k, b in borders.items():
    if b.any():
      dist[k] = ndimage.distance_transform_edt(~b, sampling=[float(s) for s in spacing])
    else:
      dist[k] = np.full(b.shape, np.inf)
  out = {}
  for src, dst in (("gt", "pred"), ("pred", "gt")):
    d = dist[dst][borders[src]]
    a = areas[codes[src][borders[src]]]
    order = np.lexsort((a, d))
    out[f"distances_{src}_to_{dst}"] = d[order]
    out[f"areas_{src}"] = a[order]
  return out


def nsd_from_distances(sd: dict, tolerance_mm: float) -> float:
  """Normalised surface Dice: the area fraction of both surfaces within ``tolerance_mm`` of the other.

  NaN when both surfaces are empty, 0 when exactly one is.
  """
  total = sd["areas_gt"].sum() + sd["areas_pred"].sum()
  if total == 0:
    return float("nan")
  within = (sd["areas_gt"][sd["distances_gt_to_pred"] <= tolerance_mm].sum()
            + sd["areas_pred"][sd["distances_pred_to_gt"] <= tolerance_mm].sum())
  return float(within / total)


def hd_from_distances(sd: dict, percent: float = 95.0) -> float:
  """Robust Hausdorff distance (mm): the larger of the two area-weighted ``percent`` percentiles.

  NaN when both surfaces are empty, inf when exactly one is.
  """
  result = []
  for d, a in ((sd["distances_gt_to_pred"], sd["areas_gt"]),
               (sd["distances_pred_to_gt"], sd["areas_pred"])):
    if len(d) == 0:
      result.append(np.inf)
      continue
    cum = np.cumsum(a) / a.sum()
    idx = int(np.searchsorted(cum, percent / 100.0))
    result.append(float(d[min(idx, len(d) - 1)]))
  if len(sd["distances_gt_to_pred"]) == 0 and len(sd["distances_pred_to_gt"]) == 0:
    return float("nan")
  return float(max(result))


def nsd(gt: np.ndarray, pred: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 2.0) -> float:
  """Normalised surface Dice of two masks [X, Y, Z] at ``tolerance_mm`` (see ``nsd_from_distances``)."""
  return nsd_from_distances(surface_distances(gt, pred, spacing), tolerance_mm)


def hd95(gt: np.ndarray, pred: np.ndarray, spacing: Sequence[float]) -> float:
  """95th-percentile Hausdorff distance in mm of two masks [X, Y, Z] (see ``hd_from_distances``)."""
  return hd_from_distances(surface_distances(gt, pred, spacing), 95.0)
