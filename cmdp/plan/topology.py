"""Target topologies of the planner: Cloud TPU accelerator types and simulated CPU devices.

    parse("v5e-32")  -> 32 TPU v5e chips, compiled for through `get_topology_desc("v5e:4x8")`
    parse("v4-64")   -> 32 TPU v4 chips (v4 and v5p names count TensorCores, two per chip)
    parse("cpu:8")   -> 8 host-platform CPU devices (XLA_FLAGS, set before jax starts)

`configure_environment(topology)` must run before jax initialises its backends (the CLI
calls it first thing). `devices(topology)` returns the devices to build meshes over; TPU
devices are compile-only descriptions (libtpu, the `tpu` extra), so nothing needs a TPU.

This module imports jax only inside functions.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation: what a device of it holds and computes."""
  kind: str  # short name in `get_topology_desc` names: v4, v5e, v5p, v6e
  hbm_bytes: int  # HBM per chip (a JAX device is a chip; v4 and v5p run as megacore)
  peak_flops: float  # dense bf16 FLOP/s per chip (published peak)
  hbm_bandwidth: float  # HBM bytes/s per chip (published)
  cores_per_chip: int  # TensorCores per chip counted by the accelerator-type name
  torus_dims: int  # 3 (v4, v5p: chips in a 3-D torus) or 2 (v5e, v6e)
  chip_counts: tuple[int, ...]  # chip counts of the slices offered


# The chips' published figures: HBM, peak bf16 FLOP/s, HBM bandwidth (GB/s = 1e9 bytes/s).
CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", 32 * GIB, 275e12, 1228e9, 2, 3, tuple(2 ** k for k in range(2, 12))),
    "v5e": Chip("v5e", 16 * GIB, 197e12, 819e9, 1, 2, (4, 8, 16, 32, 64, 128, 256)),
    "v5p": Chip("v5p", 95 * GIB, 459e12, 2765e9, 2, 3, tuple(2 ** k for k in range(2, 13))),
    "v6e": Chip("v6e", 32 * GIB, 918e12, 1640e9, 1, 2, (4, 8, 16, 32, 64, 128, 256)),
}
# Accelerator-type prefixes (as `gcloud compute tpus tpu-vm create --accelerator-type`).
PREFIXES = {"v4": "v4", "v5p": "v5p", "v5litepod": "v5e", "v5e": "v5e", "v6e": "v6e"}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A planning target.

  name: as given (`v5e-32`, `cpu:8`).
  platform: "tpu" or "cpu".
  num_devices: JAX devices (TPU: chips).
  chip: the TPU generation (None for cpu).
  desc_name: the `get_topology_desc` name, e.g. `v5e:4x8` (None for cpu).
  """
  name: str
  platform: str
  num_devices: int
  chip: Chip | None = None
  desc_name: str | None = None

  @property
  def accelerator_type(self) -> str | None:
    """The canonical Cloud TPU accelerator type (`v5litepod-32`), None for cpu."""
    if self.chip is None:
      return None
    prefix = "v5litepod" if self.chip.kind == "v5e" else self.chip.kind
    return f"{prefix}-{self.num_devices * self.chip.cores_per_chip}"


def chip_grid(chip: Chip, chips: int) -> tuple[int, ...]:
  """The standard chip grid of a slice: v5e-32 -> (4, 8); v4 with 32 chips -> (2, 4, 4).

  Powers of two, as square as possible, the larger sides last; a 4-chip 3-D slice is 2x2x1.
  """
  dims = [1] * chip.torus_dims
  while math.prod(dims) < chips:
    dims[dims.index(min(dims))] *= 2
  dims.sort()
  if chip.torus_dims == 3 and dims[0] == 1:
    dims = dims[1:] + [1]
  return tuple(dims)


def valid_names() -> list[str]:
  """Every accepted TPU accelerator type, plus the cpu form."""
  names = []
  for prefix, kind in PREFIXES.items():
    if prefix == "v5e":
      continue  # alias of v5litepod
    chip = CHIPS[kind]
    names += [f"{prefix}-{n * chip.cores_per_chip}" for n in chip.chip_counts]
  return names + ["v5e-N (= v5litepod-N)", "cpu:N"]


def parse(name: str) -> Topology:
  """The topology of an accelerator-type name or `cpu:N`.

  Raises:
    ValueError naming the argument and listing the valid names.
  """
  text = str(name).strip()
  m = re.fullmatch(r"cpu:(\d+)", text)
  if m and int(m.group(1)) >= 1:
    return Topology(text, "cpu", int(m.group(1)))
  m = re.fullmatch(r"([a-z0-9]+)-(\d+)", text)
  kind = PREFIXES.get(m.group(1)) if m else None
  if kind:
    chip = CHIPS[kind]
    cores = int(m.group(2))
    chips, rest = divmod(cores, chip.cores_per_chip)
    if not rest and chips in chip.chip_counts:
      grid = "x".join(map(str, chip_grid(chip, chips)))
      return Topology(text, "tpu", chips, chip, f"{kind}:{grid}")
  raise ValueError(f"--topology={name!r} is not a known TPU slice or cpu:N. Valid: "
                   f"{', '.join(valid_names())}. For v4 and v5p the number counts TensorCores "
                   "(two per chip): v4-64 is 32 chips.")


def configure_environment(topology: Topology) -> None:
  """Sets what jax reads when it starts; call before jax initialises.

  cpu:N: `--xla_force_host_platform_device_count=N` and `JAX_PLATFORMS=cpu`.
  TPU: `JAX_PLATFORMS=cpu` (the host runs the planner; TPU programs are only compiled) and
  the two variables without which libtpu prints an initialisation error trace on a machine
  with no TPU (`TPU_ACCELERATOR_TYPE`, `TPU_WORKER_HOSTNAMES`), and
  `ALLOW_MULTIPLE_LIBTPU_LOAD=1` (libtpu's lockfile would refuse a second process). Values
  already set win.
  Also quiets TensorFlow-style C++ logging below errors.
  """
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if topology.platform == "cpu":
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                   os.environ.get("XLA_FLAGS", "")).strip()
    os.environ["XLA_FLAGS"] = (
        f"{flags} --xla_force_host_platform_device_count={topology.num_devices}").strip()
  else:
    _quiet_libtpu(topology)


def _quiet_libtpu(topology: Topology) -> None:
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", topology.accelerator_type)
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  # libtpu takes /tmp/libtpu_lockfile, so a second process using it (a planner, a test, a
  # training job on a TPU VM) would fail with "multi-process lockfile". Compile-only
  # descriptions touch no TPU, so sharing is safe.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def devices(topology: Topology) -> list:
  """The devices to plan on: compile-only TPU devices, or the first N CPU devices.

  Raises:
    RuntimeError with the fix when libtpu is missing or too few CPU devices exist.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if topology.platform == "cpu":
    found = jax.devices("cpu")
    if len(found) < topology.num_devices:
      raise RuntimeError(
          f"--topology={topology.name}: jax started with {len(found)} CPU devices. Run the "
          "planner as `python -m cmdp.plan` (it sets XLA_FLAGS=--xla_force_host_platform_"
          f"device_count={topology.num_devices} before jax starts), or set that flag yourself.")
    return found[:topology.num_devices]
  return _tpu_devices(topology)


def _tpu_devices(topology: Topology) -> list:
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  _quiet_libtpu(topology)
  # v4 descriptions default to one device per TensorCore; TPU VMs run v4 as megacore.
  kw = {"chip_config_name": "megacore"} if topology.chip.kind == "v4" else {}
  try:
    desc = topologies.get_topology_desc(topology_name=topology.desc_name, platform="tpu", **kw)
  except Exception as err:  # pylint: disable=broad-except  (missing plugin: several types)
    raise RuntimeError(
        f"--topology={topology.name}: cannot describe TPU topology {topology.desc_name!r} "
        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Compiling "
        "for TPU without a TPU needs libtpu: pip install -e '.[tpu]'.") from err
  found = list(desc.devices)
  if len(found) != topology.num_devices:
    raise RuntimeError(f"--topology={topology.name}: {topology.desc_name} described "
                       f"{len(found)} devices, expected {topology.num_devices}.")
  return found


def libtpu_available() -> bool:
  """Whether the libtpu wheel is installed (TPU topologies can be compiled for)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  return importlib.util.find_spec("libtpu") is not None


def capacity_bytes(topology: Topology) -> tuple[int, str]:
  """Memory one device may use and what it is: HBM per chip, or host memory / N for cpu."""
  if topology.chip is not None:
    return topology.chip.hbm_bytes, f"HBM per {topology.chip.kind} chip"
  host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return host // topology.num_devices, f"host memory / {topology.num_devices} CPU devices"
