"""The tree's shape: every module imports on its own, no import dodges a cycle, registries extend in one line,
and a misspelt override or config field is refused in one line naming the closest valid names."""

from __future__ import annotations

import ast
import os
import pkgutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import jaxseg
from jaxseg import assembly, checkpoint, parallel
from jaxseg.config_checks import ConfigError, resolve_config
from jaxseg.synth import stage
from jaxseg.train import benchmark

sys.path.insert(0, os.path.dirname(__file__))
from tiny_config import tiny_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "jaxseg")


def _modules() -> list[str]:
  return sorted(m.name for m in pkgutil.walk_packages([PACKAGE], prefix="jaxseg."))


def test_every_module_imports_alone_in_a_fresh_interpreter():
  """Each module first in its own process: an import cycle fails whichever module starts it."""
  code = ("import importlib, sys\n"
          "for name in sys.argv[1:]:\n"
          "  importlib.import_module(name)\n")
  mods = _modules()
  assert "jaxseg.assembly" in mods and "jaxseg.train.loop" in mods
  # One interpreter per import-graph root order would be slow; reversed and sorted orders start every
  # module before or after its importers, which is what exposes a cycle.
  for order in (mods, mods[::-1]):
    proc = subprocess.run([sys.executable, "-c", code, *order], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_no_function_level_import_of_the_package():
  """Imports of jaxseg modules sit at the top of each module (no local import dodging a cycle)."""
  offenders = []
  for dirpath, _, files in os.walk(PACKAGE):
    for f in files:
      if not f.endswith(".py"):
        continue
      path = os.path.join(dirpath, f)
      tree = ast.parse(open(path).read())
      for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
          continue
        for node in ast.walk(fn):
          names = []
          if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
          elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
          if any(n == "jaxseg" or n.startswith("jaxseg.") for n in names):
            offenders.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}")
  assert not offenders, offenders


def test_a_misspelt_config_field_names_the_closest_valid_names():
  c = tiny_config()
  c.data.batch_sise = 2
  with pytest.raises(ConfigError, match=r"data\.batch_sise: no such config field; did you mean batch_size"):
    resolve_config(c)
  saved = tiny_config().to_dict()  # As a hand-edited config.json could hold it.
  saved["train"]["num_steps"] = "many"
  with pytest.raises(ConfigError, match=r"train\.num_steps: expected a number"):
    resolve_config(ml_collections.ConfigDict(saved))


def test_a_saved_config_without_newer_fields_resolves_to_their_defaults():
  saved = tiny_config().to_dict()
  del saved["synth"]["name"], saved["eval"]["min_tumor_confidence"]
  c = resolve_config(ml_collections.ConfigDict(saved))
  assert c.synth.name == "rule_based" and c.eval.min_tumor_confidence == 0.0


def test_misspelt_override_on_the_command_line_is_one_line():
  proc = subprocess.run([sys.executable, "launch/train.py", "--config=configs/phantom.py", "--workdir=/tmp/unused",
                         "--config.data.batch_sise=2"], capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert proc.returncode == 1
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert lines[-1] == ("error: --config.data.batch_sise: data has no field 'batch_sise'; did you mean "
                       "batch_size or patch_size?"), proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr


class _Darken:
  """A toy 'learned' synthesizer: darkens control samples' organ by a frozen, initialised amount."""

  def __init__(self, organs, synth_cfg, mesh, data_cfg):
    del synth_cfg, mesh, data_cfg
    self.organs = organs

  def init(self, rng):
    return {"drop_hu": jax.random.uniform(rng, (), minval=30.0, maxval=60.0)}

  def apply(self, params, images, labels, batch, keys):
    del keys
    fire = (batch["synth_organ"] >= 0)[:, None, None, None] & (labels == 1)
    return jnp.where(fire, images - params["drop_hu"], images), labels


def test_a_new_synthesizer_is_one_class_and_one_registry_line(tmp_path):
  """Its frozen params live in the state, pass the step unchanged and come back from a checkpoint."""
  if "toy_darken" not in stage.SYNTHESIZERS:
    stage.SYNTHESIZERS.register("toy_darken", stage.SynthesizerEntry(build=_Darken))
  config = resolve_config(tiny_config())
  config.synth.name = "toy_darken"
  run = assembly.assemble(config, parallel.make_mesh())
  state = run.init_state()
  drop = float(state["synth_params"]["drop_hu"])
  assert 30.0 <= drop <= 60.0
  batch = parallel.global_batch(benchmark.synthetic_batch(config, config.data.batch_size), run.mesh)
  state, metrics = run.train_step()(state, batch)
  assert np.isfinite(float(metrics["loss"]))
  assert float(state["synth_params"]["drop_hu"]) == drop  # Frozen: the optimizer never touches it.
  ckpt = checkpoint.RunCheckpointer(str(tmp_path), keep=1, async_save=False)
  ckpt.save(1, state, None, config)
  restored, _ = ckpt.restore(1, run.abstract_state(), None)
  ckpt.close()
  assert float(restored["synth_params"]["drop_hu"]) == drop


def test_unknown_registry_names_suggest_the_closest():
  config = tiny_config()
  config.synth.name = "rule_base"
  with pytest.raises(ValueError, match=r"synth.name: unknown name 'rule_base'.*did you mean rule_based"):
    stage.build_synthesizer(config)
  config.optim.name = "adamv"
  with pytest.raises(ValueError, match=r"optim.name: unknown name 'adamv'.*did you mean adamw"):
    assembly.assemble(config, parallel.make_mesh())


def test_readme_layout_section_matches_the_tree():
  """Every module and subpackage of jaxseg/ is named in the README's layout, and every file it names exists."""
  text = open(os.path.join(ROOT, "README.md")).read()
  section = text.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
  named = {token.rstrip(",:;").rstrip("/") for line in section.splitlines() for token in line.split()}
  tree = {f for f in os.listdir(PACKAGE) if not f.startswith("__")
          and (f.endswith(".py") or os.path.isdir(os.path.join(PACKAGE, f)))}
  missing = sorted(t for t in tree if t not in named)
  assert not missing, f"README layout section lacks: {missing}"
  gone = sorted(n for n in named if n.endswith(".py") and "/" not in n and n not in tree
                and not os.path.exists(os.path.join(ROOT, "launch", n)))
  assert not gone, f"README layout section names files that do not exist: {gone}"
