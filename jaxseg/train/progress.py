"""Progress of a run: the JSON-lines metrics log and a terminal status line.

The log (``<workdir>/metrics.jsonl``) is what plots and the scaling study read; the status line (steps/s,
ETA, loss) is for the person watching. Only the first process writes either.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

from absl import logging

from jaxseg import workdir as workdir_lib


class MetricsLog:
  """Appends one JSON object per line; safe to reopen after a resume, a kill or a full disk.

  Each record is one ``os.write`` of the whole line on an O_APPEND descriptor (workdir.append_line), so a
  kill -9 or ENOSPC leaves whole lines only; values JSON cannot hold (NaN, inf) are written as null, so every
  line is valid JSON for any reader. On resume, ``truncate_after(step)`` drops the records of steps after the
  restored checkpoint: those steps are trained again, and a reader must not see them twice.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = enabled

  def write(self, record: dict) -> None:
    if not self.enabled:
      return
    workdir_lib.append_line(self.path, json.dumps(workdir_lib.json_safe(record), allow_nan=False))

  def read(self) -> list[dict]:
    return read_metrics(self.path)

  def truncate_after(self, step: int) -> int:
    """Drops records with "step" > ``step`` (and a torn last line), atomically. Returns how many were dropped."""
    if not self.enabled or not os.path.exists(self.path):
      return 0
    with open(self.path, "rb") as f:
      lines = f.read().split(b"\n")
    keep, dropped = [], 0
    for line in lines:
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except ValueError:
        dropped += 1  # A torn line (a kill of an older version mid-write): no record to keep.
        continue
      if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > step:
        dropped += 1
      else:
        keep.append(line.decode() + "\n")
    if dropped:
      workdir_lib.atomic_write_text(self.path, "".join(keep))
      logging.info("%s: dropped %d record(s) after step %d (trained again from the checkpoint)", self.path,
                   dropped, step)
    return dropped


def read_metrics(path: str) -> list[dict]:
  """The records of a metrics.jsonl; a torn or invalid line (a kill mid-write) is skipped with a warning.

  null values (written for NaN and inf) come back as NaN, so numeric code sees what was logged.
  """
  if not os.path.exists(path):
    return []
  out = []
  with open(path, "rb") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except ValueError:
        logging.warning("%s: line %d is not valid JSON (torn by a kill?); skipped", path, n)
        continue
      if isinstance(record, dict):
        out.append({k: (float("nan") if v is None else v) for k, v in record.items()})
  return out


def _fmt_time(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
  """Steps/s and ETA over a sliding window, printed on a terminal and logged every ``log_every`` steps."""

  def __init__(self, first_step: int, num_steps: int, enabled: bool = True):
    self.num_steps = num_steps
    self.enabled = enabled
    self.tty = enabled and sys.stderr.isatty()
    self._t0 = time.time()
    self._s0 = first_step
    self.steps_per_s = float("nan")

  def update(self, step: int, loss: float, force_log: bool = False) -> None:
    now = time.time()
    if step > self._s0 and now > self._t0:
      self.steps_per_s = (step - self._s0) / (now - self._t0)
    if step - self._s0 >= 20:  # Keep the rate recent (compile time falls out of the window).
      self._t0, self._s0 = now, step
    if not self.enabled:
      return
    eta = (self.num_steps - step) / self.steps_per_s if self.steps_per_s > 0 else float("nan")
    line = (f"step {step}/{self.num_steps} | {self.steps_per_s:.2f} steps/s | ETA {_fmt_time(eta)} | "
            f"loss {loss:.4f}")
    if self.tty:
      sys.stderr.write("\r" + line + " " * 8)
      sys.stderr.flush()
    if force_log:
      if self.tty:
        sys.stderr.write("\n")
      logging.info(line)
