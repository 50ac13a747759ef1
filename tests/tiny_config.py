"""The smallest config that runs every stage of the production train step (shared by tests)."""

import ml_collections

from jaxseg.default_config import get_config


def tiny_config() -> ml_collections.ConfigDict:
  c = get_config()
  c.data.layout = "phantom"
  c.data.root = "unused"
  c.data.organs = ("liver",)
  c.data.spacing = (4.0, 4.0, 4.0)
  c.data.patch_size = (16, 16, 16)
  c.data.batch_size = 4
  c.model.features = (4, 8)
  c.model.blocks_per_stage = (1, 1)
  c.optim.name = "adamw"
  c.optim.learning_rate = 1e-3
  c.train.num_steps = 10
  c.synth.prob = 1.0
  return c
