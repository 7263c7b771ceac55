"""Decoded pixels on a budget: the ingress's memory for the report's chat body, before and after.

The body: 8 data-URI PNGs of 6000x6600 px (~130 KB each on the wire), two user turns of four,
to a vision model (images shrunk to 2048 px). Each variant runs in a fresh process and prints the
process's resident-size peak and what it keeps afterwards, sampled every 2 ms:

* ``before`` — what the ingress did before issue 17: every image decoded at once (one thread each,
  as ``asyncio.gather`` of the old ``load_image``), at full size, then shrunk; glibc's default
  malloc thresholds;
* ``after`` — ``ingress.chat_jobs`` today: headers first, one decode at a time under the decode
  budget, reduced while decoding; with ``MALLOC_MMAP_THRESHOLD_`` as the builder sets it for the
  ingress.

Run: ``.venv/bin/python -m bench.decoding`` (about 20 s on 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

MIB = 1024 * 1024

_CHILD = r'''
import asyncio, base64, io, json, sys, threading, time
import psutil
from PIL import Image

mode = sys.argv[1]
process = psutil.Process()
buf = io.BytesIO()
Image.new("RGB", (6000, 6600), (40, 120, 200)).save(buf, "PNG", optimize=True)
uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
peak, stop = 0, False

def sample():
    global peak
    while not stop:
        peak = max(peak, process.memory_info().rss)
        time.sleep(0.002)

async def before():
    from ingress.inputs.fetch import FetchLimits
    from ingress.inputs.images import fetch_image, fit_within

    def old_decode(fetched):  # the decode of the old load_image: the whole picture, oriented, RGB
        with Image.open(io.BytesIO(fetched.data)) as img:
            img.load()
            return fit_within(img.convert("RGB"), 2048, 2048)

    fetched = await asyncio.gather(*(fetch_image(uri, f"image{i}", FetchLimits()) for i in range(8)))
    return await asyncio.gather(*(asyncio.to_thread(old_decode, f) for f in fetched))

async def after():
    from ingress.chat_jobs import ChatLimits, ProviderModels, build_chat_job
    from ingress.contract.schemas.chat import parse_chat_request
    from ingress.inputs.decoding import DecodeBudget, ImageLoader, default_budget_bytes
    from ingress.inputs.fetch import FetchLimits

    images = [{"url": uri, "details": "high"} for _ in range(4)]
    req = parse_chat_request({"llm": "OpenAI", "llm_model": "gpt-4o", "image_analyze": True, "history": [
        {"role": "user", "content": {"text": "what are these?", "image_data": images}},
        {"role": "assistant", "content": "pictures"},
        {"role": "user", "content": {"text": "and these?", "image_data": images}}]})
    providers = {"OpenAI": ProviderModels(("gpt-4o",), ("gpt-4o",), max_image_side=2048)}
    async with ImageLoader(FetchLimits(), DecodeBudget(default_budget_bytes(), 3, 1)) as loader:
        return await build_chat_job(req, "t", "r", providers, ChatLimits(), loader)

start = process.memory_info().rss
thread = threading.Thread(target=sample, daemon=True)
thread.start()
began = time.perf_counter()
asyncio.run(before() if mode == "before" else after())
seconds = time.perf_counter() - began
time.sleep(0.05)
stop = True
thread.join()
print(json.dumps({"start": start, "peak": peak, "end": process.memory_info().rss, "seconds": seconds}))
'''


def run(mode: str) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if mode == "after":
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"  # ingress.wiring.builder.INGRESS_ENV
    out = subprocess.run([sys.executable, "-c", _CHILD, mode], env=env, capture_output=True, text=True, check=True,
                         timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    rows = {mode: run(mode) for mode in ("before", "after")}
    print(f"{'variant':<8} {'peak over start':>16} {'kept after':>12} {'seconds':>8}")
    for mode, r in rows.items():
        print(f"{mode:<8} {(r['peak'] - r['start']) / MIB:>13.0f} MB {(r['end'] - r['start']) / MIB:>9.0f} MB "
              f"{r['seconds']:>8.2f}")
    b, a = rows["before"], rows["after"]
    print(f"peak ratio after/before: {(a['peak'] - a['start']) / max(1, b['peak'] - b['start']):.2f}x; "
          f"kept after/before: {(a['end'] - a['start']) / max(1, b['end'] - b['start']):.2f}x; "
          f"time after/before: {a['seconds'] / b['seconds']:.2f}x")


if __name__ == "__main__":
    main()
