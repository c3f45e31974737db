"""Compression: EF21 error feedback (osmos.compress.ef21) and randomized parameter sharing (osmos.compress.rps)."""
