"""Start one snapshot of a large model and exit at once (run as a subprocess by test_snapshot.py)."""

import sys

import torch

from osmos.ft.snapshot import Snapshotter

layers = int(sys.argv[1])
model = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048) for _ in range(layers)])  # 16 MiB a layer
opt = torch.optim.SGD(model.parameters(), lr=0.1)
Snapshotter(model, opt).step(0)  # no wait(), no close(): the interpreter exits with the copy in flight
