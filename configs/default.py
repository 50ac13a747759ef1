"""Default configuration: a liver run on AbdomenAtlas 2.0 at the published settings (see the fields in
jaxseg/default_config.py, which every config file starts from).

  python launch/train.py --config=configs/default.py --workdir=runs/liver \
      --config.data.root=/data/AbdomenAtlas2.0 --config.data.layout=atlas2
"""

from jaxseg.default_config import get_config  # noqa: F401  (config_flags calls get_config)
