"""Test-session settings: XLA:CPU compiles without LLVM's optimisation passes.

Why: the suite runs hundreds of tiny programs, where compilation, not execution, is the cost (a model-zoo
file: 95 s with XLA's default backend optimisation, 44 s without). ``--xla_backend_optimization_level=0``
changes how XLA:CPU's LLVM backend optimises the generated code, not what jaxseg computes: the same jitted
steps, loaders and CLIs run. Set before any test imports jax (conftest.py is imported first); subprocesses
the tests start inherit it unless they set XLA_FLAGS themselves. A user's own XLA_FLAGS are kept, and an
explicit optimisation level there wins.
"""

import os

_FLAG = "--xla_backend_optimization_level"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}=0".strip()
