"""LoRA requests, stacks and their effect on the tiny SD 1.5 / SDXL pipelines."""

from __future__ import annotations

import asyncio
import gc
import shutil

import numpy as np
import pytest
import torch

from deployments.errors import InvalidJobError
from deployments.pipelines.lora import (
    MAX_LORAS,
    LoadedStack,
    LoraLibrary,
    LoraRequest,
    activate,
    adapter_name,
    deactivate,
    load_stack,
    loaded_adapters,
    unload,
)
from deployments.pipelines.tiny_options import LORA_NAMES, write_tiny_loras

pytestmark = [
    # peft notes a second adapter / a deleted active adapter: expected here.
    pytest.mark.filterwarnings("ignore:Already found a `peft_config`:UserWarning"),
    pytest.mark.filterwarnings("ignore:Adapter .* was active which is now deleted:UserWarning"),
]


@pytest.fixture(scope="module")
def sd15_loras(tmp_path_factory):
    return write_tiny_loras(tmp_path_factory.mktemp("loras-sd15"), "sd15")


@pytest.fixture(scope="module")
def sdxl_loras(tmp_path_factory):
    return write_tiny_loras(tmp_path_factory.mktemp("loras-sdxl"), "sdxl")


@pytest.fixture(scope="module")
def library(sd15_loras):
    return LoraLibrary(sd15_loras)


@pytest.fixture(scope="module")
def pipes(tiny_models):
    """Own SD 1.5 pipelines: adapters must not leak into the session-wide fixtures."""
    from deployments.loader import load_pipeline

    return load_pipeline(str(tiny_models["tiny-sd15"]))


@pytest.fixture
def sd(pipes):
    yield pipes.text2img
    assert loaded_adapters(pipes.text2img) == set(), "a test left adapters loaded"


def run(pipe, size: int = 64) -> np.ndarray:
    return pipe(
        "a red cat", num_inference_steps=2, height=size, width=size,
        generator=torch.Generator().manual_seed(0), output_type="np",
    ).images


# ---- the library and request parsing --------------------------------------------------


def test_names_lists_only_valid_lora_files(tmp_path, sd15_loras):
    for name in LORA_NAMES:
        shutil.copy(sd15_loras / f"{name}.safetensors", tmp_path / f"{name}.safetensors")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "bad name.safetensors").write_bytes(b"x")
    (tmp_path / "dir.safetensors").mkdir()
    assert LoraLibrary(tmp_path).names() == sorted(LORA_NAMES)


def test_missing_directory_is_a_config_error(tmp_path):
    with pytest.raises(NotADirectoryError):
        LoraLibrary(tmp_path / "nope")


def test_parse_defaults_and_broadcast(library):
    assert library.parse(None, None) is None
    assert library.parse("  ", "") is None
    assert library.parse("tiny-ink", None) == LoraRequest(("tiny-ink",), (1.0,))
    req = library.parse(" tiny-sketch , tiny-ink ", "0.3")
    assert req == LoraRequest(("tiny-sketch", "tiny-ink"), (0.3, 0.3))
    assert library.parse("tiny-ink,tiny-clay", "0.1, 1").strengths == (0.1, 1.0)
    assert library.parse("tiny-ink", 0.7).strengths == (0.7,)


def test_stack_id_is_canonical_and_ignores_strengths(library):
    a = library.parse("tiny-sketch,tiny-ink", "0.2,0.9")
    b = library.parse("tiny-ink,tiny-sketch", "1")
    assert a.stack_id == b.stack_id == "tiny-ink,tiny-sketch"


@pytest.mark.parametrize("model", [
    "nope", "tiny-ink,nope", "../tiny-ink", "..", ".", "a/b", "/etc/passwd", "tiny-ink/",
    "sub/../tiny-ink", "tiny-ink.safetensors", "tiny ink", "~root", "tiny-ink\x00", "tiny-ink,,tiny-clay",
])
def test_unknown_or_unsafe_names_are_rejected(library, model):
    with pytest.raises(InvalidJobError) as info:
        library.parse(model, None)
    assert info.value.field == "lora_model"


def test_traversal_cannot_reach_a_file_outside(tmp_path, sd15_loras):
    inside = tmp_path / "loras"
    inside.mkdir()
    shutil.copy(sd15_loras / "tiny-ink.safetensors", tmp_path / "outside.safetensors")
    library = LoraLibrary(inside)
    for name in ("../outside", "..%2Foutside", str(tmp_path / "outside")):
        with pytest.raises(InvalidJobError) as info:
            library.path(name)
        assert info.value.field == "lora_model"


def test_unknown_name_lists_available(library):
    with pytest.raises(InvalidJobError) as info:
        library.parse("nope", None)
    assert "tiny-clay, tiny-ink, tiny-sketch" in info.value.message


def test_available_list_is_bounded(tmp_path, sd15_loras):
    for i in range(30):
        shutil.copy(sd15_loras / "tiny-ink.safetensors", tmp_path / f"l{i:02d}.safetensors")
    with pytest.raises(InvalidJobError) as info:
        LoraLibrary(tmp_path).parse("nope", None)
    assert "l19" in info.value.message and "l20" not in info.value.message
    assert "and 10 more" in info.value.message


def test_duplicates_and_too_many(library, tmp_path, sd15_loras):
    with pytest.raises(InvalidJobError, match="duplicate") as info:
        library.parse("tiny-ink,tiny-clay,tiny-ink", None)
    assert info.value.field == "lora_model"
    for i in range(MAX_LORAS + 1):
        shutil.copy(sd15_loras / "tiny-ink.safetensors", tmp_path / f"l{i}.safetensors")
    many = LoraLibrary(tmp_path)
    assert len(many.parse(",".join(f"l{i}" for i in range(MAX_LORAS)), None).names) == MAX_LORAS
    with pytest.raises(InvalidJobError, match=f"at most {MAX_LORAS}") as info:
        many.parse(",".join(f"l{i}" for i in range(MAX_LORAS + 1)), None)
    assert info.value.field == "lora_model"


@pytest.mark.parametrize("strength", [
    "abc", "0.05", "0", "1.5", "-0.5", "nan", "inf", "0.5,0.5,0.5", "0.5,", 2, True, [0.5],
])
def test_bad_strengths_are_rejected(library, strength):
    with pytest.raises(InvalidJobError) as info:
        library.parse("tiny-ink,tiny-clay", strength)
    assert info.value.field == "lora_strength"


def test_strength_without_model_is_rejected(library):
    with pytest.raises(InvalidJobError) as info:
        library.parse(None, "0.5")
    assert info.value.field == "lora_strength"


def test_adapter_names_are_injective_and_dot_free():
    names = ["a.b", "a_b", "a_db", "a__b", "a_.b", "tiny-ink"]
    adapters = [adapter_name(n) for n in names]
    assert len(set(adapters)) == len(names)
    assert not any("." in a for a in adapters)
    assert adapter_name("tiny-ink") == "tiny-ink"


# ---- loading and applying (SD 1.5) ----------------------------------------------------


def test_lora_changes_output_strengths_differ_and_deactivation_restores_base(pipes, sd, library):
    base = run(sd)
    stack = load_stack(sd, library, ["tiny-ink"])
    try:
        assert np.array_equal(run(sd), base), "loading alone must not change the base output"
        activate(sd, ["tiny-ink"], [1.0])
        full = run(sd)
        activate(sd, ["tiny-ink"], [0.3])
        weak = run(sd)
        assert np.abs(full - base).max() > 1e-2
        assert np.abs(weak - full).max() > 1e-2
        # the adapter sits in the shared UNet: img2img/inpaint see it too
        assert pipes.img2img.get_list_adapters() == sd.get_list_adapters()
        deactivate(sd)
        assert np.array_equal(run(sd), base)
        activate(sd, ["tiny-ink"], [1.0])  # enable_lora again after disable_lora
        assert np.array_equal(run(sd), full)
    finally:
        stack.unload()
    assert loaded_adapters(sd) == set()
    assert np.array_equal(run(sd), base)


def test_stack_of_two_with_text_encoder_lora(sd, library):
    base = run(sd)
    req = library.parse("tiny-clay,tiny-sketch", "0.8,0.6")
    stack = load_stack(sd, library, sorted(req.names))
    try:
        assert stack.stack_id == req.stack_id
        assert sd.get_list_adapters() == {"unet": ["tiny-clay", "tiny-sketch"], "text_encoder": ["tiny-clay"]}
        stack.activate(req)
        both = run(sd)
        activate(sd, ["tiny-sketch"], [0.6])
        sketch = run(sd)
        assert np.abs(both - base).max() > 1e-2
        assert np.abs(both - sketch).max() > 1e-2
        with pytest.raises(ValueError, match="does not match"):
            stack.activate(library.parse("tiny-ink", None))
        deactivate(sd)
        assert np.array_equal(run(sd), base)
    finally:
        stack.unload()
    assert sd.get_list_adapters() == {}


def test_stacks_share_a_lora_and_unload_frees_only_unused(sd, library):
    a = load_stack(sd, library, ["tiny-ink", "tiny-sketch"])
    b = load_stack(sd, library, ["tiny-ink", "tiny-clay"])
    assert loaded_adapters(sd) == {"tiny-ink", "tiny-sketch", "tiny-clay"}
    a.unload()
    assert loaded_adapters(sd) == {"tiny-ink", "tiny-clay"}
    a.unload()  # idempotent
    b.activate(library.parse("tiny-clay,tiny-ink", None))
    b.unload()
    assert loaded_adapters(sd) == set()
    with pytest.raises(ValueError, match="not loaded"):
        unload(sd, ["tiny-ink"])


def test_dotted_lora_name_loads(sd, sd15_loras, tmp_path):
    shutil.copy(sd15_loras / "tiny-ink.safetensors", tmp_path / "ink.v2.safetensors")
    library = LoraLibrary(tmp_path)
    req = library.parse("ink.v2", "0.5")
    stack = load_stack(sd, library, req.names)
    try:
        assert loaded_adapters(sd) == {adapter_name("ink.v2")}
        stack.activate(req)
    finally:
        stack.unload()


def test_failed_load_releases_what_it_loaded(sd, sd15_loras, sdxl_loras, tmp_path):
    shutil.copy(sd15_loras / "tiny-ink.safetensors", tmp_path / "tiny-ink.safetensors")
    shutil.copy(sdxl_loras / "tiny-ink.safetensors", tmp_path / "for-sdxl.safetensors")
    library = LoraLibrary(tmp_path)
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_stack(sd, library, ["tiny-ink", "for-sdxl"])
    assert loaded_adapters(sd) == set()


def test_serve_eviction_protocol_unloads_once(sd, library):
    """What ray/serve/multiplex.py (2.60) does on LRU eviction, then Python's own finalizer."""
    stack = load_stack(sd, library, ["tiny-ink"])
    assert isinstance(stack, LoadedStack) and hasattr(stack, "__del__")

    async def evict(model):
        await asyncio.get_running_loop().run_in_executor(None, model.__del__)
        model.__del__ = lambda _: None

    asyncio.run(evict(stack))
    assert loaded_adapters(sd) == set()
    other = load_stack(sd, library, ["tiny-ink"])  # reloaded by a later stack
    del stack
    gc.collect()  # the class __del__ runs again: it must not release `other`'s adapter
    assert loaded_adapters(sd) == {"tiny-ink"}
    other.unload()


# ---- SDXL --------------------------------------------------------------------------------


def test_sdxl_stack(tiny_models, sdxl_loras):
    from deployments.loader import load_pipeline

    pipe = load_pipeline(str(tiny_models["tiny-sdxl"])).text2img
    library = LoraLibrary(sdxl_loras)
    base = run(pipe)
    req = library.parse("tiny-ink,tiny-clay", "1,0.5")
    stack = load_stack(pipe, library, req.names)
    assert pipe.get_list_adapters() == {
        "unet": ["tiny-ink", "tiny-clay"], "text_encoder": ["tiny-clay"], "text_encoder_2": ["tiny-clay"],
    }
    stack.activate(req)
    styled = run(pipe)
    activate(pipe, req.names, [0.2, 0.2])
    weak = run(pipe)
    assert np.abs(styled - base).max() > 1e-2
    assert np.abs(weak - styled).max() > 1e-2
    deactivate(pipe)
    assert np.array_equal(run(pipe), base)
    stack.unload()
    assert loaded_adapters(pipe) == set()
    assert np.array_equal(run(pipe), base)


def test_tiny_loras_are_deterministic_and_distinct(tmp_path, sd15_loras):
    from safetensors.torch import load_file

    again = write_tiny_loras(tmp_path, "sd15", names=("tiny-ink",), with_text_encoder=())
    first, second = load_file(sd15_loras / "tiny-ink.safetensors"), load_file(again / "tiny-ink.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    sketch = load_file(sd15_loras / "tiny-sketch.safetensors")
    assert first.keys() == sketch.keys() and not all(torch.equal(first[k], sketch[k]) for k in first)
    assert all(k.startswith("unet.") for k in first)
    assert any(k.startswith("text_encoder.") for k in load_file(sd15_loras / "tiny-clay.safetensors"))
    with pytest.raises(ValueError, match="unknown base"):
        write_tiny_loras(tmp_path, "sd3")
