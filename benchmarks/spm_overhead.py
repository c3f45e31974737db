"""SPM inference overhead on the zoo's shapes-unet: the bare pipeline vs the same with two SPMs attached
(4 prompts, 10 DDIM steps, 1 torch thread), the adapter kernel called directly (the default for calls
autograd does not record) vs through the torch custom op (what every call did before), interleaved
in one process, medians of ROUNDS rounds.

    PYTHONPATH=python python benchmarks/spm_overhead.py [ROUNDS]
"""
import sys, time, statistics, torch, osmos.zoo
from osmos.erase.spm import SPM, apply_spm
mod = sys.modules["osmos.ops.adapter_inject"]
direct = mod.eager_untracked
torch.set_num_threads(1)
pipe = osmos.zoo.load("shapes-unet")
spms = []
for c, seed in (("red", 1), ("circle", 2)):
    spm = SPM.for_unet(pipe.unet, c)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for u in spm.up: u.copy_(torch.randn(u.shape, generator=g) * 0.01)
    spms.append(spm)
prompts = ["a red circle", "a blue star"] * 2
def run():
    return pipe(prompts, num_inference_steps=10, generator=torch.Generator().manual_seed(0))
times = {"base": [], "spm, direct": [], "spm, op": []}
outs = {}
for r in range(int(sys.argv[1]) if len(sys.argv) > 1 else 7):
    for k in times:
        mod.eager_untracked = direct if k != "spm, op" else (lambda *a: False)
        t0 = time.perf_counter()
        if k == "base":
            outs[k] = run()
        else:
            with apply_spm(pipe.unet, spms):
                outs[k] = run()
        times[k].append(time.perf_counter() - t0)
med = {k: statistics.median(v) for k, v in times.items()}
print({k: round(v, 4) for k, v in med.items()}, "overhead direct", round(med["spm, direct"] / med["base"] - 1, 3),
      "op", round(med["spm, op"] / med["base"] - 1, 3), "same images", torch.equal(outs["spm, direct"], outs["spm, op"]))
