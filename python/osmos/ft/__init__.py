"""Fault tolerance: in-memory snapshots held by a manager process (osmos.ft.snapshot) and Reed-Solomon erasure coding (osmos.ft.ec)."""
