"""osmos.ft: fault tolerance for training. In-memory snapshots held by a manager process
outside the trainer (`start_manager`, `Snapshotter`, `restore_or_init`), and `RSCodec`, the
Reed-Solomon erasure code that protects snapshots against the loss of whole nodes."""

from osmos.ft.ec import RSCodec
from osmos.ft.manager import start_manager
from osmos.ft.restore import SnapshotCorrupted, restore_or_init
from osmos.ft.snapshot import Snapshotter

__all__ = ["RSCodec", "SnapshotCorrupted", "Snapshotter", "restore_or_init", "start_manager"]
