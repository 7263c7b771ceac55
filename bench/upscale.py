"""What tiling buys the ESRGAN upscaler: peak memory and time, tiled against untiled.

    python -m bench.upscale [--features 32] [--blocks 4] [--sizes 256,512] [--tiles 128,256]

Each configuration runs in a fresh process (so its peak RSS is its own) on an RRDBNet of
``--features`` x ``--blocks`` (seeded random weights, the original ESRGAN key layout, loaded
through spandrel like real weights; 4x-UltraSharp is 64 x 23). It upscales an ``S`` x ``S``
picture 4x once untiled (one model call on the whole image) and once per tile size, and
prints wall time, the process's peak RSS above its loaded baseline, and both as ratios
against the untiled run of the same size — plus how far the tiled image is from the untiled
one (mean and max absolute difference, 0..255).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import json, resource, sys, time
import numpy as np
from PIL import Image
from deployments.pipelines.esrgan import load_upscaler

path, size, tile, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
up = load_upscaler(path, device="cpu", tile=tile, overlap=16)
rng = np.random.default_rng(0)
small = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
up.upscale(Image.new("RGB", (16, 16)), 4)  # warm-up: first-call allocations out of the measurement
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
image = up.upscale(small, 4)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
image.save(out)
print(json.dumps({"seconds": seconds, "peak_mb": (peak - base) / 1024}))
"""


def _run(weights: Path, size: int, tile: int, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(weights), str(size), str(tile), str(out)],
                          capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    from PIL import Image

    from deployments.pipelines.tiny_upscalers import esrgan_state_dict

    parser = argparse.ArgumentParser(prog="python -m bench.upscale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--tiles", default="128,256")
    args = parser.parse_args(argv)
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "4x-bench.safetensors"
        save_file(esrgan_state_dict(4, features=args.features, blocks=args.blocks), str(weights))
        print(f"RRDBNet {args.features} features x {args.blocks} blocks, 4x, CPU, OMP_NUM_THREADS=2")
        print(f"{'input':>9} {'tile':>9} {'seconds':>8} {'peak MB':>8} {'time ×':>7} {'memory ×':>8} "
              f"{'mean |Δ|':>8} {'max |Δ|':>7}")
        for size in (int(s) for s in args.sizes.split(",")):
            ref_path = Path(tmp) / f"untiled-{size}.png"
            ref = _run(weights, size, 1 << 20, ref_path)
            reference = np.asarray(Image.open(ref_path), dtype=np.int16)
            print(f"{size:>4}x{size:<4} {'untiled':>9} {ref['seconds']:8.2f} {ref['peak_mb']:8.0f} {1:7.2f} {1:8.2f} "
                  f"{0:8.2f} {0:7d}")
            for tile in (int(t) for t in args.tiles.split(",")):
                path = Path(tmp) / f"tiled-{size}-{tile}.png"
                got = _run(weights, size, tile, path)
                diff = np.abs(np.asarray(Image.open(path), dtype=np.int16) - reference)
                print(f"{size:>4}x{size:<4} {tile:>9} {got['seconds']:8.2f} {got['peak_mb']:8.0f} "
                      f"{got['seconds'] / ref['seconds']:7.2f} {got['peak_mb'] / max(ref['peak_mb'], 1):8.2f} "
                      f"{diff.mean():8.2f} {int(diff.max()):7d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
