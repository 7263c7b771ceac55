"""What the conditioned tasks and the generation options cost next to plain text-to-image,
on one family replica in process (tiny models, CPU): ratios against text2img measured in
the same run, and a LoRA stack warm versus loaded for the call.

    .venv/bin/python bench/families.py [--repeat 5] [--steps 4] [--size 256]

Tiny random weights: the ratios show the extra work each path adds around the same UNet
(preprocessors, a ControlNet, the IP-Adapter's attach/detach, adapter loading), not GPU
timings of real models.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    import yaml
    from PIL import Image, ImageDraw

    from deployments.families.diffusion import DiffusionFamily
    from deployments.pipelines.lora import load_stack
    from deployments.tiny import make_tiny_models
    from deployments.types import ImageJob
    from ingress.wiring.registry import ServiceConfig
    from storage.factory import open_store
    from storage.settings import StorageSettings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-families-"))
    models = make_tiny_models(tmp / "models")
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "serve_config.yaml").read_text())
    config_args = raw["applications"][0]["args"]
    config_args["models_dir"] = str(tmp / "models")
    config = ServiceConfig.model_validate(config_args)
    store = open_store(StorageSettings(backend="local", local_root=tmp / "objects", signing_secret="bench"))
    image = Image.new("RGB", (args.size, args.size), "white")
    ImageDraw.Draw(image).ellipse((args.size // 4, args.size // 4, 3 * args.size // 4, 3 * args.size // 4), fill="black")

    def family(name: str) -> DiffusionFamily:
        tasks, controls = config.family_tasks(name)
        return DiffusionFamily(str(models[f"tiny-{name}"]), store=store, family=name, gpu="a100", tasks=tasks,
                               controls=controls, components=config.families[name].components.resolve(config.models_path()))

    def timed(fam: DiffusionFamily, _stack=None, **kw) -> float:
        base = dict(task="text2img", tenant="bench", request_id="r", prompt="a lighthouse", seed=1,
                    num_inference_steps=args.steps, height=args.size, width=args.size)
        job = ImageJob(**{**base, **kw})
        fam.model.generate(job, lora_stack=_stack)  # warm-up
        runs = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            fam.model.generate(job, lora_stack=_stack)
            runs.append(time.perf_counter() - start)
        return statistics.median(runs)

    print(f"tiny models, {args.size}x{args.size}, {args.steps} steps, median of {args.repeat}; ratio = path / text2img")
    for name, cases in (
        ("sdxl", [("ControlNet canny", dict(task="controlnet", control="canny", image=image)),
                  ("ControlNet depth", dict(task="controlnet", control="depth", image=image)),
                  ("ControlNet openpose", dict(task="controlnet", control="openpose", image=image)),
                  ("Image Variation", dict(task="variation", image=image))]),
        ("sd15", [("Illusion", dict(task="illusion", control="qrcode", image=image)),
                  ("Image Variation", dict(task="variation", image=image)),
                  ("tomesd", dict(tomesd=True)), ("vae", dict(vae="tiny-vae-alt")),
                  ("weighted prompt", dict(prompt="a (lighthouse:1.4), [fog]")),
                  ("safety checker", dict(safety_checker=True))]),
    ):
        fam = family(name)
        base = timed(fam)
        print(f"\n{name}: text2img {base * 1000:.1f} ms = 1.00x")
        for label, kw in cases:
            seconds = timed(fam, **kw)
            print(f"  {label:22s} {seconds * 1000:7.1f} ms = {seconds / base:.2f}x")
        if name == "sd15":
            pipe, loras = fam.model.pipelines.text2img, fam.model.options.loras
            stack = load_stack(pipe, loras, ["tiny-ink", "tiny-clay"])
            warm = timed(fam, lora_model="tiny-ink,tiny-clay", _stack=stack)
            stack.unload()
            loads = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                fresh = load_stack(pipe, loras, ["tiny-ink", "tiny-clay"])
                fam.model.generate(ImageJob(task="text2img", tenant="bench", request_id="r", prompt="a lighthouse",
                                            seed=1, num_inference_steps=args.steps, height=args.size, width=args.size,
                                            lora_model="tiny-ink,tiny-clay"), lora_stack=fresh)
                loads.append(time.perf_counter() - start)
                fresh.unload()
            loaded = statistics.median(loads)
            print(f"  {'LoRA stack, warm':22s} {warm * 1000:7.1f} ms = {warm / base:.2f}x")
            print(f"  {'LoRA stack, loaded':22s} {loaded * 1000:7.1f} ms = {loaded / base:.2f}x "
                  f"(loaded / warm = {loaded / warm:.2f}x: what multiplexed routing saves)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
