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
  now defaults to Explicit axes, which shard_map rejects for unsharded inputs; DESIGN.md).
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


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
                           local_device_count: int = 0, timeout_s: int = 300) -> bool:
  """Joins a multi-process JAX run when flags or the environment ask for one.

  Explicit flags win; otherwise JAX's own detection covers SLURM (SLURM_* variables) and TPU VMs, and
  JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID are read here for plain launchers.
  Must run before any other JAX call.

  Args:
    coordinator_address: host:port of process 0.
    num_processes: total number of processes.
    process_id: this process's index.
    local_device_count: CPU only: how many host devices this process exposes (for tests on one machine).
    timeout_s: how long to wait for all processes at start-up and at shutdown barriers.
  Returns:
    True when running multi-process.
  """
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  num_processes = num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0") or 0)
  if process_id < 0:
    process_id = int(os.environ.get("JAX_PROCESS_ID", "-1") or -1)
  if local_device_count:
    jax.config.update("jax_num_cpu_devices", int(local_device_count))
  if coordinator_address and num_processes > 1:
    if process_id < 0:
      raise ValueError("process_id: a multi-process run needs --process_id (or JAX_PROCESS_ID)")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=timeout_s)
    return True
  if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    jax.distributed.initialize(initialization_timeout=timeout_s)  # JAX reads SLURM's variables.
    return True
  if os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
    jax.distributed.initialize(initialization_timeout=timeout_s)  # TPU VM pod slice.
    return True
  return False
