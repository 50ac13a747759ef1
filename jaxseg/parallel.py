"""Devices, the mesh and shardings, and multi-process start-up.

One named axis, "data": the global batch is split over every device of every process, parameters and
optimizer state are replicated. The same code runs on one CPU device, N forced host devices, several GPUs,
and several processes joined by jax.distributed.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named "data" over ``devices`` (default: all devices of all processes).

  Auto axis types: inputs put in place with NamedSharding work under jit and shard_map alike (jax.make_mesh
  now defaults to Explicit axes, which shard_map rejects for unsharded inputs; docs/DESIGN.md).
  """
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
  """Raises ValueError naming data.batch_size when the batch does not split evenly over the devices."""
  n = mesh.devices.size
  if global_batch % n:
    raise ValueError(f"data.batch_size: {global_batch} does not divide by the {n} devices of the mesh; "
                     f"use a multiple of {n}")


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Assembles global arrays, split over "data", from this process's slice of the batch."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def barrier(name: str, timeout_s: float = 3600.0) -> None:
  """Waits until every process reaches ``name`` (no-op with one process).

  Uses the coordination service rather than a device collective: a device barrier (sync_global_devices)
  fails after 30 s over gloo when one process is busy longer (preparing data on process 0), while this one
  waits ``timeout_s`` and still fails at once when a process dies.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  client = distributed.global_state.client
  if client is None:  # Joined by some other means (e.g. a runtime that manages processes itself).
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)
    return
  client.wait_at_barrier(name, int(timeout_s * 1000))


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
                           local_device_count: int = 0, timeout_s: int = 300,
                           heartbeat_timeout_s: int = 100) -> bool:
  """Joins a multi-process JAX run when flags or the environment ask for one.

  Explicit arguments win, then JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (plain
  launchers). Otherwise JAX's own detection is used inside a SLURM job step with several tasks (srun sets
  SLURM_PROCID), and everywhere when ``coordinator_address`` is "auto" (TPU VM pod slices, Open MPI).
  Must run before any other JAX call.

  When a process dies, the coordination service notices within ``heartbeat_timeout_s`` and the others
  stop with an error naming the dead task instead of waiting in a collective forever.

  Args:
    coordinator_address: host:port of process 0, or "auto" to let JAX detect the cluster.
    num_processes: total number of processes.
    process_id: this process's index.
    local_device_count: CPU only: how many host devices this process exposes (for tests on one machine).
    timeout_s: how long to wait for all processes to join at start-up.
    heartbeat_timeout_s: how long a silent process is tolerated before the run is declared failed.
  Returns:
    True when running multi-process.
  Raises:
    ValueError: an incomplete or inconsistent process specification (the message names the flag).
  """
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  num_processes = num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0") or 0)
  if process_id < 0:
    process_id = int(os.environ.get("JAX_PROCESS_ID", "-1") or -1)
  if local_device_count < 0:
    raise ValueError(f"local_device_count: {local_device_count} is negative")
  if local_device_count:
    jax.config.update("jax_num_cpu_devices", int(local_device_count))
  timeouts = {"initialization_timeout": int(timeout_s), "heartbeat_timeout_seconds": int(heartbeat_timeout_s)}
  if coordinator_address == "auto":
    jax.distributed.initialize(**timeouts)  # JAX detects TPU VMs, SLURM and Open MPI itself.
    return jax.process_count() > 1
  if coordinator_address or num_processes > 1 or process_id >= 0:
    if not coordinator_address or num_processes < 1:
      raise ValueError("coordinator_address: a multi-process run needs --coordinator_address=host:port and "
                       "--num_processes (or JAX_COORDINATOR_ADDRESS and JAX_NUM_PROCESSES)")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"process_id: {process_id} is not in [0, {num_processes}); pass --process_id "
                       "(or JAX_PROCESS_ID)")
    if num_processes == 1:
      return False
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, **timeouts)
    return True
  if _in_slurm_step() and int(os.environ["SLURM_NTASKS"]) > 1:
    jax.distributed.initialize(**timeouts)  # JAX reads SLURM's variables (coordinator, count, id, GPUs).
    return True
  return False


def _in_slurm_step() -> bool:
  """Inside ``srun`` (not merely in an allocation's shell, where SLURM_JOB_ID is set too)."""
  return all(v in os.environ for v in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID"))
