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


class MetricsLog:
  """Appends one JSON object per line; safe to reopen after a resume (appends)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = enabled

  def write(self, record: dict) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record, default=float) + "\n")

  def read(self) -> list[dict]:
    if not os.path.exists(self.path):
      return []
    with open(self.path) as f:
      return [json.loads(line) for line in f if line.strip()]


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
