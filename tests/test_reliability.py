"""Faults a hostile but realistic user meets, and what each now does (docs/RELIABILITY.md lists them).

Each test asserts the outcome and that nothing already written was lost. The in-process tests come first
(fast); the end-to-end ones drive launch/train.py on copies of one tiny trained run (a module fixture).
"""

from __future__ import annotations

import errno
import json
import logging as logging_lib
import os
import shutil
import signal
import subprocess
import sys
import time

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxseg import checkpoint, cli, workdir as workdir_lib
from jaxseg.data.preprocess import preprocess_dataset
from jaxseg.data.validate import validate_dataset
from jaxseg.io.nifti import save_nifti
from jaxseg.train.progress import MetricsLog, read_metrics
from tests.tiny_config import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "launch", "train.py")
AFF = np.diag([2.0, 2.0, 3.0, 1.0])


def _last_line(proc) -> str:
  lines = proc.stderr.strip().splitlines()
  return lines[-1] if lines else ""


# ---------------------------------------------------------------------------------------------------------
# The work directory: one owner, atomic records.


def test_second_run_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(tmp_path):
  wd = str(tmp_path / "w")
  with workdir_lib.WorkdirLock(wd):
    with pytest.raises(workdir_lib.WorkdirError, match=rf"in use by another run \(pid {os.getpid()} on host "):
      workdir_lib.WorkdirLock(wd).acquire()
  # A holder killed with SIGKILL runs no cleanup: its lock file stays, the kernel drops the lock.
  code = ("import sys, time; from jaxseg.workdir import WorkdirLock; WorkdirLock(sys.argv[1]).acquire(); "
          "print('held', flush=True); time.sleep(60)")
  holder = subprocess.Popen([sys.executable, "-c", code, wd], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT))
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(workdir_lib.WorkdirError, match=f"pid {holder.pid} "):
      workdir_lib.WorkdirLock(wd).acquire()
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  assert json.load(open(os.path.join(wd, ".lock")))["pid"] == holder.pid  # The stale file is still there...
  with workdir_lib.WorkdirLock(wd):  # ...and taken over.
    assert json.load(open(os.path.join(wd, ".lock")))["pid"] == os.getpid()


def test_resume_config_refuses_state_fields_and_records_resumable_ones(tmp_path):
  wd = str(tmp_path)
  c = tiny_config()
  workdir_lib.record_config(wd, c, {}, 0)
  before = open(os.path.join(wd, "config.json")).read()
  changed = tiny_config()
  changed.model.features = (4, 16)
  changed.seed = 3
  changed.train.num_steps = 20
  with pytest.raises(workdir_lib.WorkdirError) as e:
    workdir_lib.check_resume_config(wd, changed, has_checkpoint=True)
  msg = str(e.value)
  assert "\n" not in msg and "model.features ([4, 8] -> [4, 16])" in msg and "seed (0 -> 3)" in msg
  assert "num_steps" not in msg.split("may change only")[0]
  assert open(os.path.join(wd, "config.json")).read() == before  # The record is untouched.
  assert workdir_lib.check_resume_config(wd, changed, has_checkpoint=False)  # Nothing trained yet: accepted.
  ok = tiny_config()
  ok.train.num_steps, ok.eval.overlap, ok.optim.learning_rate = 20, 0.25, 1e-4
  changes = workdir_lib.check_resume_config(wd, ok, has_checkpoint=True)
  assert set(changes) == {"train.num_steps", "eval.overlap", "optim.learning_rate"}
  workdir_lib.record_config(wd, ok, changes, 6)
  assert json.load(open(os.path.join(wd, "config.json")))["train"]["num_steps"] == 20
  history = [json.loads(l) for l in open(os.path.join(wd, workdir_lib.HISTORY_NAME))]
  assert history[-1]["step"] == 6 and history[-1]["changes"]["train.num_steps"] == [10, 20]
  assert not [n for n in os.listdir(wd) if ".tmp" in n]


def test_check_run_config_catches_what_training_would_meet_late():
  for field, value, match in [("eval.overlap", 1.5, "eval.overlap: 1.5 must be in"),
                              ("eval.window_batch", 0, "eval.window_batch"),
                              ("eval.nsd_tolerance_mm", 0.0, "eval.nsd_tolerance_mm"),
                              ("train.best_metric", "tumour_dsc", "train.best_metric: unknown metric 'tumour_dsc'"),
                              ("train.best_metric", "tumor_hd95", "lower-is-better"),
                              ("train.best_metric", "liver_tumor/fp_per_tumor_case", "lower-is-better")]:
    c = tiny_config()
    section, name = field.split(".")
    c[section][name] = value
    with pytest.raises(ValueError, match=match):
      workdir_lib.check_run_config(c)
  c = tiny_config()
  c.train.best_metric = "liver_tumor/nsd"
  workdir_lib.check_run_config(c)


def test_metrics_log_lines_are_whole_valid_json_and_truncated_on_resume(tmp_path):
  log = MetricsLog(str(tmp_path))
  for step in range(1, 5):
    log.write({"step": step, "loss": float("nan") if step == 2 else 1.0 / step, "rate": np.float32(np.inf)})
  with open(log.path, "a") as f:
    f.write('{"step": 5, "loss": 0.')  # A torn line, as a kill mid-write by an older version leaves it.
  lines = open(log.path).read().splitlines()
  assert all(json.loads(l) for l in lines[:4]) and '"loss": null' in lines[1] and "NaN" not in lines[1]
  records = read_metrics(log.path)  # Tolerates the torn line.
  assert [r["step"] for r in records] == [1, 2, 3, 4] and np.isnan(records[1]["loss"])
  assert log.truncate_after(3) == 2  # Step 4 and the torn line: the resumed run logs them again.
  assert [json.loads(l)["step"] for l in open(log.path)] == [1, 2, 3]


def test_metrics_line_is_not_torn_by_a_full_disk(tmp_path, monkeypatch):
  log = MetricsLog(str(tmp_path))
  log.write({"step": 1, "loss": 1.0})
  real = os.write

  def short_write(fd, data):
    return real(fd, bytes(data)[:7])  # What a nearly full disk does: a partial write.

  monkeypatch.setattr(os, "write", short_write)
  with pytest.raises(OSError) as e:
    log.write({"step": 2, "loss": 0.5})
  assert e.value.errno == errno.ENOSPC
  monkeypatch.undo()
  assert [json.loads(l) for l in open(log.path)] == [{"step": 1, "loss": 1.0}]


def test_disk_errors_are_recognised_in_orbax_text():
  orbax = ValueError('RESOURCE_EXHAUSTED: Error writing "params.w/0" in OCDBT database at local file "/w/'
                     'checkpoints/1.orbax-checkpoint-tmp/state/": Failed to write 559475 bytes to file 4: No space '
                     "left on device [os_error_code='28']")
  assert workdir_lib.disk_error(orbax) == "no space left on device"
  assert workdir_lib.disk_error(OSError(errno.EDQUOT, "quota")) == "disk quota exceeded"
  assert workdir_lib.disk_error(ValueError("other")) is None
  assert workdir_lib.failed_path(orbax, "?") == "/w/checkpoints/1"
  # Orbax's background threads log the same failure as ERROR tracebacks: dropped, the run's one line says it.
  quiet = cli._QuietLibraries()  # pylint: disable=protected-access
  record = logging_lib.LogRecord("orbax", logging_lib.ERROR, "/site-packages/orbax/checkpoint/future.py", 1,
                                 "thread raised an exception: %s", (orbax,), None)
  record.exc_info = (ValueError, orbax, None)
  assert not quiet.filter(record)
  record = logging_lib.LogRecord("orbax", logging_lib.ERROR, "/site-packages/orbax/x.py", 1, "other", (), None)
  assert quiet.filter(record)


# ---------------------------------------------------------------------------------------------------------
# Checkpoints: a damaged part is named and the newest intact checkpoint is used.


def _tiny_checkpoints(wd):
  """Steps 1, 2, 3 of a small state and a Grain iterator that has consumed 2 * step elements."""
  ck = checkpoint.RunCheckpointer(wd, keep=5, async_save=False)
  cfg = ml_collections.ConfigDict({"data": {"num_workers": 0}})
  it = iter(grain.MapDataset.range(100).to_iter_dataset())
  for step in (1, 2, 3):
    next(it), next(it)
    ck.save(step, {"params": {"w": jnp.full((64,), float(step))}}, it, cfg)
  ck.wait()
  ck.close()
  return {"params": {"w": jax.ShapeDtypeStruct((64,), jnp.float32)}}


def _restore(wd, abstract):
  ck = checkpoint.RunCheckpointer(wd, keep=5, async_save=False)
  it = iter(grain.MapDataset.range(100).to_iter_dataset())
  try:
    state, step, _ = ck.restore_latest_intact(abstract, it, num_workers=0)
  finally:
    ck.close()
  return state, step, next(it)


def test_damaged_parts_fall_back_to_the_newest_intact_checkpoint(tmp_path, caplog):
  wd = str(tmp_path)
  abstract = _tiny_checkpoints(wd)
  ckdir = os.path.join(wd, "checkpoints")
  # Step 3: a truncated tensor file. Step 2: an iterator state that is valid JSON but not Grain's.
  for name in os.listdir(os.path.join(ckdir, "3", "state", "d")):
    path = os.path.join(ckdir, "3", "state", "d", name)
    os.truncate(path, os.path.getsize(path) // 2)
  json.dump({"next_index": "four"}, open(os.path.join(ckdir, "2", "data_iter", "process_0-of-1.json"), "w"))
  # Inference needs the parameters only: the newest checkpoint whose parameters restore (step 2).
  params, step = checkpoint.restore_params(wd, abstract["params"])
  assert step == 2 and float(params["w"][0]) == 2.0
  with pytest.raises(checkpoint.DamagedCheckpointError, match=r"checkpoints/3/state: damaged"):
    checkpoint.restore_params(wd, abstract["params"], step=3)
  caplog.clear()
  state, step, nxt = _restore(wd, abstract)
  assert step == 1 and float(state["params"]["w"][0]) == 1.0 and nxt == 2  # Step 1's data position.
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "is damaged" in r.getMessage()]
  assert len(warnings) == 2 and "3/state is damaged" in warnings[0] and "falling back to step 2" in warnings[0]
  assert "2/data_iter is damaged" in warnings[1] and "\n" not in warnings[0] + warnings[1]
  # Kept for inspection...
  assert {n.split(".")[0] for n in os.listdir(os.path.join(wd, "checkpoints_damaged"))} == {"2", "3"}
  assert sorted(os.listdir(ckdir)) == ["1"]  # ...and out of Orbax's way.


def test_torn_iterator_json_and_no_intact_checkpoint(tmp_path):
  wd = str(tmp_path)
  abstract = _tiny_checkpoints(wd)
  ckdir = os.path.join(wd, "checkpoints")
  open(os.path.join(ckdir, "3", "data_iter", "process_0-of-1.json"), "w").write('{"next_ind')
  assert checkpoint.RunCheckpointer(wd).check_step(3)[0] == "data_iter/process_0-of-1.json"
  for step in ("1", "2"):
    os.remove(os.path.join(ckdir, step, "config", "metadata"))
  with pytest.raises(checkpoint.DamagedCheckpointError, match=r"no intact checkpoint \(steps \[3, 2, 1\]"):
    _restore(wd, abstract)


def test_interrupted_save_leaves_the_previous_checkpoints_usable(tmp_path):
  """What kill -9 during an Orbax save leaves: a half-written <step>.orbax-checkpoint-tmp folder."""
  wd = str(tmp_path)
  abstract = _tiny_checkpoints(wd)
  ckdir = os.path.join(wd, "checkpoints")
  partial = os.path.join(ckdir, "4.orbax-checkpoint-tmp")
  shutil.copytree(os.path.join(ckdir, "3"), partial)
  os.remove(os.path.join(partial, "_CHECKPOINT_METADATA"))
  state, step, nxt = _restore(wd, abstract)
  assert step == 3 and float(state["params"]["w"][0]) == 3.0 and nxt == 6


# ---------------------------------------------------------------------------------------------------------
# Data: a bad scan is one line, never the end of the set.


def _save_sform_only(array, affine, path):
  """A NIfTI whose geometry is the sform alone: how scanners' exports carry affines nibabel cannot decompose
  into a qform (a zero or NaN spacing)."""
  import nibabel as nib  # pylint: disable=import-outside-toplevel
  img = nib.Nifti1Image(array, None)
  img.set_sform(np.asarray(affine, np.float64), code=1)
  img.set_qform(None, code=0)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  nib.save(img, path)


def _atlas_case(root, case_id, affine=AFF):
  d = os.path.join(root, case_id)
  liver = np.zeros((8, 8, 6), np.uint8)
  liver[2:6, 2:6, 1:5] = 1
  _save_sform_only(np.full((8, 8, 6), 40, np.int16), affine, os.path.join(d, "ct.nii.gz"))
  _save_sform_only(liver, affine, os.path.join(d, "segmentations", "liver.nii.gz"))


def test_zero_spacing_and_nan_affine_are_named_by_validate_and_skipped_by_preprocess(tmp_path):
  root = str(tmp_path / "atlas")
  _atlas_case(root, "ok")
  _atlas_case(root, "zero", affine=np.diag([2.0, 0.0, 3.0, 1.0]))
  nan = AFF.copy()
  nan[0, 3] = np.nan
  _atlas_case(root, "nanaff", affine=nan)
  problems = validate_dataset("atlas", root, ("liver",))
  assert any("zero/ct.nii.gz: voxel spacing" in p and "not positive" in p for p in problems), problems
  assert any("nanaff/ct.nii.gz: the affine has NaN" in p for p in problems), problems
  report = preprocess_dataset("atlas", root, str(tmp_path / "cache"), (2.0, 2.0, 3.0), ("liver",), workers=1)
  assert report.processed == ["ok"] and {c for c, _ in report.skipped} == {"zero", "nanaff"}
  index = json.load(open(tmp_path / "cache" / "index.json"))
  assert [c["case_id"] for c in index["cases"]] == ["ok"] and len(index["skipped"]) == 2


def test_full_disk_during_preprocessing_names_the_case_and_keeps_finished_cases(tmp_path, monkeypatch):
  root = str(tmp_path / "atlas")
  for c in ("a", "b", "c"):
    _atlas_case(root, c)
  dst = str(tmp_path / "cache")
  monkeypatch.setenv(workdir_lib.FAULT_ENV, "case:b")
  with pytest.raises(workdir_lib.DiskError, match=r"cases/b: no space left on device while writing case 'b'"):
    preprocess_dataset("atlas", root, dst, (2.0, 2.0, 3.0), ("liver",), workers=1)
  assert os.path.exists(os.path.join(dst, "cases", "a", "meta.json"))
  monkeypatch.delenv(workdir_lib.FAULT_ENV)
  report = preprocess_dataset("atlas", root, dst, (2.0, 2.0, 3.0), ("liver",), workers=1)
  assert report.existing == ["a"] and sorted(report.processed) == ["b", "c"]


def test_predict_folder_goes_on_past_bad_files(tmp_path):
  from jaxseg.infer import predict  # pylint: disable=import-outside-toplevel
  from tests.test_infer_predict import _config, _oracle  # pylint: disable=import-outside-toplevel
  src = tmp_path / "in"
  img = np.where(np.indices((16, 16, 16)).sum(0) > 20, 250.0, -175.0).astype(np.float32)
  save_nifti(img, np.diag([2.0, 2.0, 2.0, 1.0]), str(src / "a.nii.gz"), np.int16)
  nan = np.diag([2.0, 2.0, 2.0, 1.0])
  nan[1, 3] = np.nan
  _save_sform_only(img.astype(np.int16), nan, str(src / "b.nii.gz"))
  open(src / "c.nii.gz", "wb").write(b"not a nifti")
  save_nifti(img, np.diag([2.0, 2.0, 2.0, 1.0]), str(src / "d.nii.gz"), np.int16)
  failures = []
  out = str(tmp_path / "out")
  written = predict.predict_files(_config((2.0, 2.0, 2.0)), None, str(src), out, predict_fn=_oracle,
                                  progress=False, failures=failures)
  assert [os.path.basename(w) for w in written] == ["a.nii.gz", "d.nii.gz"]
  assert len(failures) == 2 and "b.nii.gz: the affine has NaN" in failures[0] and "c.nii.gz:" in failures[1]
  assert set(json.load(open(os.path.join(out, "scores.json")))) == {"a", "d"}


def test_synthesize_reports_nan_voxels(tmp_path):
  from jaxseg.synth import nifti_tool  # pylint: disable=import-outside-toplevel
  img = np.full((8, 8, 8), 60.0, np.float32)
  img[1, 2, 3] = np.nan
  save_nifti(img, np.eye(4), str(tmp_path / "ct.nii.gz"), np.float32)
  save_nifti(np.ones((8, 8, 8), np.uint8), np.eye(4), str(tmp_path / "m.nii.gz"), np.uint8)
  with pytest.raises(ValueError, match=r"ct.nii.gz: 1 NaN or infinite voxels"):
    nifti_tool.synthesize_file(str(tmp_path / "ct.nii.gz"), str(tmp_path / "m.nii.gz"), "liver",
                               str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")


# ---------------------------------------------------------------------------------------------------------
# One line per user error.


def test_cli_parsers_and_output_folder_checks(tmp_path):
  assert cli.parse_checkpoint("12") == 12 and cli.parse_checkpoint("best") == "best"
  assert cli.parse_checkpoint("") is None and cli.parse_checkpoint(None) is None
  with pytest.raises(ValueError, match=r"--checkpoint: 'abc' is not a step number"):
    cli.parse_checkpoint("abc")
  with pytest.raises(ValueError, match=r"--spacing: 'abc' is not a number"):
    cli.parse_floats("--spacing", ["1", "abc", "1"], count=3, positive=True)
  with pytest.raises(ValueError, match=r"--spacing: '0' must be a positive"):
    cli.parse_floats("--spacing", ["1", "0", "1"], count=3, positive=True)
  f = tmp_path / "file"
  f.write_text("x")
  with pytest.raises(ValueError, match="--output: .* exists and is not a directory"):
    cli.check_output_dir(str(f), "--output")
  with pytest.raises(ValueError, match="is a file, not a directory"):
    cli.check_output_dir(str(f / "sub"), "--output")
  with pytest.raises(workdir_lib.WorkdirError, match="--workdir: .* exists and is not a directory"):
    workdir_lib.check_workdir_path(str(f))


@pytest.mark.parametrize("args, expect", [
    (["--config=/nonexistent/cfg.py", "--workdir={w}"], "error: --config: /nonexistent/cfg.py: no such config file"),
    (["--config={cfg}", "--workdir={f}"], "error: --workdir: {f} exists and is not a directory"),
    (["--config={cfg}", "--workdir={w}", "--config.eval.overlap=1.5"], "error: eval.overlap: 1.5 must be in [0, 1)"),
    (["--config={cfg}", "--workdir={w}", "--config.train.best_metric=tumour_dsc"],
     "error: train.best_metric: unknown metric 'tumour_dsc'"),
])
def test_train_cli_fails_in_one_line_before_any_work(tmp_path, args, expect):
  f = tmp_path / "afile"
  f.write_text("x")
  fmt = {"w": str(tmp_path / "w"), "f": str(f), "cfg": os.path.join(ROOT, "configs", "phantom.py") + ":smoke"}
  cmd = [sys.executable, TRAIN, *[a.format(**fmt) for a in args], f"--config.data.root={tmp_path / 'nodata'}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT))
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr and _last_line(proc).startswith(expect.format(**fmt)), proc.stderr[-2000:]
  assert not os.path.exists(tmp_path / "nodata")  # Nothing was prepared.


def test_other_scripts_fail_in_one_line(tmp_path):
  f = tmp_path / "afile"
  f.write_text("x")
  cases = [
      (["launch/preprocess.py", "--layout=atlas", f"--src={tmp_path}", f"--dst={tmp_path / 'c'}", "--spacing=abc"],
       "error: --spacing: 'abc' is not a number"),
      (["launch/predict.py", f"--workdir={tmp_path}", f"--input={f}", f"--output={tmp_path / 'o'}",
        "--checkpoint=abc"], "error: --checkpoint: 'abc' is not a step number"),
      (["launch/predict.py", f"--workdir={tmp_path}", f"--input={f}", f"--output={f}"],
       f"error: --output: {f} exists and is not a directory"),
  ]
  for args, expect in cases:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert _last_line(proc).startswith(expect), proc.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------------
# End to end: launch/train.py on copies of one tiny trained run.

STEPS = ["--config.train.num_steps=6", "--config.train.checkpoint_every=2", "--config.train.keep_checkpoints=5",
         "--config.eval.bootstrap=10", "--config.eval.max_cases=1", "--config.train.best_metric=organ_dsc"]
# One validation case (time) and a metric it always defines (the case may have no tumour: tumor_dsc NaN).


def _train(workdir, data_root, *overrides, env=None):
  cmd = [sys.executable, TRAIN, "--config=" + os.path.join(ROOT, "configs", "phantom.py") + ":smoke",
         f"--workdir={workdir}", f"--config.data.root={data_root}", *STEPS, *overrides]
  return subprocess.run(cmd, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, **(env or {})),
                        capture_output=True, text=True, timeout=600)


def _losses(workdir) -> dict[int, tuple]:
  """(data_crc, loss) per logged training step; fails if a step is logged twice or a line is not JSON."""
  out = {}
  for line in open(os.path.join(workdir, "metrics.jsonl")):
    r = json.loads(line)
    if "loss" in r:
      assert r["step"] not in out, f"step {r['step']} logged twice"
      out[r["step"]] = (r["data_crc"], r["loss"])
  return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """One finished 6-step smoke run with checkpoints at 2, 4, 6 and a final validation on 2 held-out cases."""
  base = tmp_path_factory.mktemp("reliability")
  data_root, workdir = str(base / "phantoms"), str(base / "run")
  proc = _train(workdir, data_root)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, data_root


def _copy(trained, tmp_path) -> str:
  dst = str(tmp_path / "run")
  shutil.copytree(trained[0], dst)
  return dst


def test_damaged_checkpoints_are_named_and_the_newest_intact_one_resumes_exactly(trained, tmp_path):
  wd = _copy(trained, tmp_path)
  ck = os.path.join(wd, "checkpoints")
  for name in os.listdir(os.path.join(ck, "6", "state", "d")):  # A truncated tensor file in step 6...
    os.truncate(os.path.join(ck, "6", "state", "d", name), 100)
  open(os.path.join(ck, "4", "data_iter", "process_0-of-1.json"), "w").write('{"next_')  # ...a torn iterator in 4.
  with open(os.path.join(wd, "metrics.jsonl"), "a") as f:
    f.write('{"step": 7, "lo')  # ...and a torn metrics line.
  config_before = open(os.path.join(wd, "config.json")).read()
  proc = _train(wd, trained[1])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "checkpoints/6/state is damaged" in proc.stderr and "falling back to step 4" in proc.stderr
  assert "checkpoints/4/data_iter/process_0-of-1.json is damaged" in proc.stderr
  assert "falling back to step 2" in proc.stderr and "data order restarts" not in proc.stderr
  assert _losses(wd) == _losses(trained[0])  # Steps 3-6 trained again on the same data: same losses.
  assert open(os.path.join(wd, "config.json")).read() == config_before
  assert {n.split(".")[0] for n in os.listdir(os.path.join(wd, "checkpoints_damaged"))} == {"4", "6"}
  assert sorted(os.listdir(ck)) == ["2", "4", "6"] and os.listdir(os.path.join(wd, "best"))


def test_finished_run_killed_in_its_final_validation_validates_and_fills_best(trained, tmp_path):
  wd = _copy(trained, tmp_path)
  shutil.rmtree(os.path.join(wd, "best"))
  shutil.rmtree(os.path.join(wd, "eval", "step_6"))
  metrics_before = open(os.path.join(wd, "metrics.jsonl")).read()
  proc = _train(wd, trained[1])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert os.listdir(os.path.join(wd, "best")) == ["6"]
  assert os.path.exists(os.path.join(wd, "eval", "step_6", "summary.json")) and "tumour DSC" in proc.stdout
  assert open(os.path.join(wd, "metrics.jsonl")).read() == metrics_before


def test_second_run_and_incompatible_config_are_refused_without_touching_the_run(trained, tmp_path):
  wd = _copy(trained, tmp_path)
  before = {p: open(os.path.join(wd, p), "rb").read() for p in ("config.json", "metrics.jsonl")}
  with workdir_lib.WorkdirLock(wd):
    proc = _train(wd, trained[1])
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert _last_line(proc).startswith(f"error: {wd}: in use by another run (pid {os.getpid()} on host ")
  proc = _train(wd, trained[1], "--config.model.features=(4,16)")
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert _last_line(proc).startswith(f"error: {wd}/config.json: this run was trained with other values of "
                                     "model.features ([4, 8] -> [4, 16])")
  assert {p: open(os.path.join(wd, p), "rb").read() for p in before} == before
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["2", "4", "6"]


def test_full_disk_and_kill_during_save_lose_nothing_and_the_same_command_resumes(trained, tmp_path):
  wd = _copy(trained, tmp_path)
  shutil.rmtree(os.path.join(wd, "checkpoints", "6"))  # As if killed after step 6 was logged, before its save.
  more = ["--config.train.keep_checkpoints=4", "--config.eval.overlap=0.25"]  # Changes a resume may make.
  proc = _train(wd, trained[1], *more, env={workdir_lib.FAULT_ENV: "save:6"})
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert _last_line(proc) == (f"error: {wd}/checkpoints/6: no space left on device while writing the run's "
                              "files; checkpoints up to step 4 are complete; free space and rerun the same "
                              "command to resume")
  assert sorted(_losses(wd)) == list(range(1, 7))  # Steps 5 and 6 logged again, once.
  history = [json.loads(l) for l in open(os.path.join(wd, workdir_lib.HISTORY_NAME))]
  assert history[-1]["step"] == 4 and history[-1]["changes"] == {"eval.overlap": [0.5, 0.25],
                                                                 "train.keep_checkpoints": [5, 4]}
  proc = _train(wd, trained[1], *more, env={checkpoint.KILL_IN_SAVE_ENV: "6"})
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  assert sorted(n for n in os.listdir(os.path.join(wd, "checkpoints")) if n.isdigit()) in (["2", "4"],
                                                                                           ["2", "4", "6"])
  proc = _train(wd, trained[1], *more)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _losses(wd) == _losses(trained[0])  # The same data order and losses as the uninterrupted run.
  assert "6" in os.listdir(os.path.join(wd, "checkpoints")) and os.listdir(os.path.join(wd, "best")) == ["6"]


def test_evaluate_with_cache_dir_writes_nothing_beside_the_data(trained, tmp_path):
  wd, data_root = trained
  one_case = tmp_path / "data"  # A data set whose folder must stay untouched (a read-only disk).
  one_case.mkdir()
  first = sorted(d for d in os.listdir(data_root) if d.startswith("BDMAP"))[0]
  os.symlink(os.path.join(data_root, first), one_case / first)
  evaluate = [sys.executable, os.path.join(ROOT, "launch", "evaluate.py"), f"--workdir={wd}",
              f"--data=atlas:{one_case}", f"--cache_dir={tmp_path / 'cache'}", f"--out={tmp_path / 'report'}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  bad = evaluate + ["--config=" + os.path.join(ROOT, "configs", "phantom.py"), "--config.eval.overlap=1.5"]
  proc = subprocess.run(bad, capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 1 and _last_line(proc).startswith("error: eval.overlap: 1.5"), proc.stderr[-2000:]
  assert not os.path.exists(tmp_path / "cache")  # Refused before any work.
  proc = subprocess.run(evaluate, capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert os.path.exists(tmp_path / "cache" / "index.json") and os.path.exists(tmp_path / "report" / "summary.json")
  assert sorted(os.listdir(tmp_path)) == ["cache", "data", "report"]  # No <data>_cache_* beside the data set.
