"""Multi-process JAX: when and how `jax.distributed` starts, and what differs after it.

A run is one process per host (a TPU VM worker, a SLURM task, or several processes on
one machine for tests). `initialize` starts `jax.distributed` from, in this order:
  1. explicit values (launch.main's --coordinator_address / --num_processes /
     --process_id), e.g. two CPU processes on localhost;
  2. the environment (`JAX_COORDINATOR_ADDRESS`, or `USER_LLM_MULTIHOST=1` to let jax
     detect a SLURM / Open MPI / Kubernetes cluster);
  3. a Cloud TPU VM (jax reads the workers from the VM's metadata);
and otherwise stays a single process. Everything after it is the same code on every
process: the mesh spans all devices (`jax.devices()`), every process reads its rows of
each global batch (`data_pipelines.process_rows`) and `sharding.shard_batch` assembles
them with `jax.make_array_from_process_local_data`; Orbax saves and restores the
sharded train state with every process taking part, plus one Grain iterator state per
process.
"""

import glob
import os

from absl import logging
import jax

# Set on Cloud TPU VMs by the TPU runtime; /dev/accel* (v4, v5p) or /dev/vfio/N (v5e,
# v6e) are the chips themselves.
_TPU_ENV = ('TPU_WORKER_HOSTNAMES', 'TPU_ACCELERATOR_TYPE', 'TPU_WORKER_ID')


def on_tpu_vm() -> bool:
  """True on a Cloud TPU VM (without initialising any jax backend)."""
  return (any(os.environ.get(k) for k in _TPU_ENV) or bool(glob.glob('/dev/accel*'))
          or bool(glob.glob('/dev/vfio/[0-9]*')))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> str:
  """Starts `jax.distributed` when the run has several processes; returns how.

  Must run before anything touches a jax backend (`jax.devices()`).

  Args:
    coordinator_address: 'host:port' of process 0's coordinator, or None.
    num_processes: number of processes; 1 forces a single process (e.g. evaluating a
      multi-host run's checkpoint on one TPU VM worker).
    process_id: this process, in [0, num_processes).

  Returns:
    'flags', 'env', 'tpu_vm' or 'single'.
  """
  if num_processes == 1:
    return 'single'
  if coordinator_address or num_processes or process_id is not None:
    if not (coordinator_address and num_processes and process_id is not None):
      raise ValueError('Multi-process needs all of --coordinator_address, --num_processes '
                       f'and --process_id; got {coordinator_address!r}, {num_processes!r}, '
                       f'{process_id!r}.')
    if os.environ.get('JAX_PLATFORMS', '').startswith('cpu'):
      # CPU processes reach each other through gloo (jax's default since 0.5; set for
      # older versions): no collectives without it.
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    how = 'flags'
  elif os.environ.get('JAX_COORDINATOR_ADDRESS') or os.environ.get('USER_LLM_MULTIHOST'):
    jax.distributed.initialize()
    how = 'env'
  elif on_tpu_vm():
    jax.distributed.initialize()  # Workers and coordinator from the VM's metadata.
    how = 'tpu_vm'
  else:
    return 'single'
  logging.info('jax.distributed (%s): process %d of %d, %d local / %d global devices', how,
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return how
