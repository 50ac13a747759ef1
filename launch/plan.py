"""Plans a training config for a data set: fingerprint (spacings, shapes, intensities, tumour sizes) and
nnU-Net's rules (docs/PLANNING.md), written as a config file launch/train.py takes.

  python launch/plan.py --layout=msd --src=/data/Task03_Liver --organs=liver --gpu_memory_gb=24 \
      --out=plan_config.py
  python launch/train.py --config=plan_config.py --workdir=runs/liver_planned

Also writes <out without .py>_fingerprint.json with the full fingerprint and the plan.
"""

from absl import app, flags

from jaxseg import cli
from jaxseg.io.layouts import LAYOUTS

_LAYOUT = flags.DEFINE_enum("layout", None, list(LAYOUTS), "Layout of --src.", required=True)
_SRC = flags.DEFINE_string("src", None, "The data set folder (or manifest file).", required=True)
_ORGANS = flags.DEFINE_list("organs", ["liver"], "Organs of the label space (jaxseg/labels.py), in order.")
_GPU = flags.DEFINE_float("gpu_memory_gb", 24.0, "Accelerator memory to plan the patch and batch for.")
_OUT = flags.DEFINE_string("out", "plan_config.py", "Config file to write.")
_BASE = flags.DEFINE_integer("base_features", 32, "Features of the first stage (doubling, up to 320).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype to plan for.")
_WORKERS = flags.DEFINE_integer("workers", 2, "Parallel processes reading cases.")
_MAX_CASES = flags.DEFINE_integer("max_cases", 0, "Fingerprint only the first N cases (0: all).")


@cli.user_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from jaxseg.plan import plan_dataset  # pylint: disable=import-outside-toplevel
  plan = plan_dataset(_LAYOUT.value, _SRC.value, tuple(_ORGANS.value), _OUT.value, _GPU.value, _BASE.value,
                      _DTYPE.value, _WORKERS.value, _MAX_CASES.value)
  print(f"wrote {_OUT.value}: spacing {plan['spacing']} mm, patch {plan['patch_size']}, batch "
        f"{plan['batch_size']}, HU window {plan['hu_window']}, {len(plan['features'])} stages "
        f"(~{plan['estimated_memory_gib']} GiB)")


if __name__ == "__main__":
  app.run(main)
