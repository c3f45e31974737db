"""Diffusion acceleration: HarmoniCa learned feature cache for DiTs (osmos.accel.harmonica) and
Streamlined Inference's exact sliced operators for video diffusion (osmos.accel.streamline)."""
