"""osmos.ft: fault tolerance for training. In-memory snapshots held by a manager process
outside the trainer (`start_manager`, `Snapshotter`, `restore_or_init`; `SnapshotAdamW` makes the parameters and
optimizer state of a snapshot free by writing them straight into the manager's memory), flushed to disk in the
background as a persistent fallback (`PersistConfig`, `read_checkpoint`), `RSCodec`, the
Reed-Solomon erasure code, and `StripePlan` / `StripeProtector`, which place snapshot parity on
other nodes and rebuild the snapshots of lost nodes."""

from osmos.ft.checksum import copy_with_crc32c, crc32c
from osmos.ft.ec import RSCodec
from osmos.ft.manager import start_manager
from osmos.ft.optim import SnapshotAdamW
from osmos.ft.persist import PersistConfig, read_checkpoint
from osmos.ft.restore import SnapshotCorrupted, restore_or_init
from osmos.ft.snapshot import Snapshotter
from osmos.ft.stripes import StripePlan, StripeProtector

__all__ = ["PersistConfig", "RSCodec", "SnapshotAdamW", "SnapshotCorrupted", "Snapshotter", "StripePlan", "StripeProtector", "copy_with_crc32c",
           "crc32c", "read_checkpoint", "restore_or_init", "start_manager"]
