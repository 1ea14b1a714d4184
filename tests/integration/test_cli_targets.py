"""`cdissect run` on what researchers study: tiny random timm and Hugging Face ViTs (registers
included) built offline from configs, SAE latents as units, content addressing of user files,
`layers`/`models` without weights, and bad input that fails before any work with nothing written.

One set of services (`cdissect up`) serves the module; every model and SAE is made on the spot.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_cli_support import results, run_cli, run_dir_of, services_up, write_probe, write_words

N_IMAGES, SHARD = 12, 6
WORK_PREFIXES = ("activations/", "embeddings/", "labels/")  # inputs (probe set, user files) may be registered


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    """Services started by `cdissect up` for the module."""
    yield from services_up(tmp_path_factory.mktemp("targets"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Probe folder, words, and a tiny HF DINOv2-with-registers folder saved from a config."""
    from transformers import BitImageProcessor, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    tmp = tmp_path_factory.mktemp("target-inputs")
    folder = tmp / "dinoreg"
    config = Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, image_size=56, patch_size=14, num_register_tokens=4)
    torch.manual_seed(0)
    Dinov2WithRegistersModel(config).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56}).save_pretrained(folder)
    return {"probe": write_probe(tmp / "probe", N_IMAGES, seed=4), "words": write_words(tmp / "words.txt"),
            "hf": folder, "tmp": tmp}


def sae_file(path: Path, d_in: int, d_sae: int, seed: int = 0, threshold: bool = False) -> Path:
    g = torch.Generator().manual_seed(seed)
    tensors = {"W_enc": torch.randn(d_in, d_sae, generator=g) * 0.2, "b_enc": torch.zeros(d_sae),
               "b_dec": torch.zeros(d_in), "W_dec": torch.randn(d_sae, d_in, generator=g)}
    if threshold:
        tensors["threshold"] = torch.full((d_sae,), 0.01)
    save_file(tensors, str(path))
    return path


def args(inputs: dict[str, Path], clip: Path, model: str, layers: str, *extra: str) -> list[str]:
    return ["run", "--model", model, "--layers", layers, "--probe-set", str(inputs["probe"]), "--concept-set",
            str(inputs["words"]), "--clip-model", str(clip), "--shard-size", str(SHARD), "--param", "top_k=3",
            "--top-images", "4", "--no-progress", *extra]


def store_keys(env: dict[str, str], prefixes: tuple[str, ...] = WORK_PREFIXES) -> set[str]:
    root = Path(env["CDISSECT_STORE"][len("file://"):])
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
            and p.relative_to(root).as_posix().startswith(prefixes)}


def runs(env: dict[str, str]) -> set[str]:
    return {p.name for p in Path(env["CDISSECT_RUNS_DIR"]).iterdir()}


@pytest.mark.slow
def test_timm_vit_with_a_register_token_runs_end_to_end(env, inputs, tiny_clip_checkpoint: Path) -> None:
    proc = run_cli(args(inputs, tiny_clip_checkpoint, "timm:test_vit2", "blocks[3],norm", "--weights", "none",
                        "--token-pooling", "patch_mean"), env, timeout=600)
    doc = results(run_dir_of(proc))
    assert [(layer["name"], len(layer["units"])) for layer in doc["layers"]] == [("blocks[3]", 64), ("norm", 64)]
    assert doc["job"]["target_model"] == "timm:test_vit2" and doc["job"]["token_pooling"] == "patch_mean"
    assert all(len(u["top_images"]) == 4 for layer in doc["layers"] for u in layer["units"])


@pytest.mark.slow
def test_hf_folder_with_registers_and_sae_latents_end_to_end(env, inputs, tiny_clip_checkpoint: Path) -> None:
    base = args(inputs, tiny_clip_checkpoint, f"hf:{inputs['hf']}", "encoder.layer[1]")
    plain = results(run_dir_of(run_cli(base, env, timeout=600)))
    assert len(plain["layers"][0]["units"]) == 32

    sae = sae_file(inputs["tmp"] / "sae.safetensors", 32, 200, threshold=True)
    first = run_cli([*base, "--features", f"sae:{sae}"], env, timeout=600)
    doc = results(run_dir_of(first))
    assert len(doc["layers"][0]["units"]) == 200 and doc["job"]["features"] == f"sae:{sae}"
    assert doc["reused"]["image embeddings"]["computed"] == 0  # the CLIP side is shared with the plain run
    assert doc["reused"]["activations"]["computed"] == N_IMAGES // SHARD

    again = results(run_dir_of(run_cli([*base, "--features", f"sae:{sae}"], env, timeout=600)))
    assert again["reused"]["activations"] == {"total": 2, "reused": 2, "computed": 0}
    assert again["layers"][0]["activation_keys"] == doc["layers"][0]["activation_keys"]

    sae_file(sae, 32, 200, seed=1, threshold=True)  # the same path, other weights: new keys
    changed = results(run_dir_of(run_cli([*base, "--features", f"sae:{sae}"], env, timeout=600)))
    assert changed["reused"]["activations"]["computed"] == 2
    assert set(changed["layers"][0]["activation_keys"]).isdisjoint(doc["layers"][0]["activation_keys"])
    topk = results(run_dir_of(run_cli([*base, "--features", f"sae:{sae}:topk=5"], env, timeout=600)))
    assert set(topk["layers"][0]["activation_keys"]).isdisjoint(changed["layers"][0]["activation_keys"])


@pytest.mark.slow
def test_timm_checkpoint_digest_is_in_the_keys(env, inputs, tiny_clip_checkpoint: Path) -> None:
    import timm

    keys = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        path = inputs["tmp"] / f"vit-{seed}.safetensors"
        save_file({k: v.contiguous() for k, v in timm.create_model("test_vit2").state_dict().items()}, str(path))
        doc = results(run_dir_of(run_cli(args(inputs, tiny_clip_checkpoint, f"timm:test_vit2:{path}", "blocks[1]",
                                              "--token-pooling", "mean"), env, timeout=600)))
        keys.append(doc["layers"][0]["activation_keys"])
    assert keys[0] == keys[1] and set(keys[0]).isdisjoint(keys[2])


@pytest.mark.slow
def test_bad_input_fails_before_any_work_with_nothing_written(env, inputs, tiny_clip_checkpoint: Path) -> None:
    import timm

    wide = sae_file(inputs["tmp"] / "wide.safetensors", 48, 64)
    wrong_ckpt = inputs["tmp"] / "resnet.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()}, str(wrong_ckpt))
    hf = f"hf:{inputs['hf']}"
    before_keys, before_runs = store_keys(env), runs(env)
    cases = [
        (args(inputs, tiny_clip_checkpoint, hf, "encoder.layer[1]", "--features", f"sae:{wide}"),
         ["reads 48-wide activations but the layer gives 32", "wide.safetensors"]),
        (args(inputs, tiny_clip_checkpoint, "timm:vit_tiny_patch16_2240", "blocks[1]"),
         ["unknown timm model 'vit_tiny_patch16_2240'", "Closest: vit_tiny_patch16_224"]),
        (args(inputs, tiny_clip_checkpoint, hf, "encoder.layer[0],encoder.layer[1]", "--features", f"sae:{wide}"),
         ["exactly one layer, but 2 are given"]),
        (args(inputs, tiny_clip_checkpoint, f"timm:test_vit2:{wrong_ckpt}", "blocks[1]"),
         ["resnet.safetensors do not fit VisionTransformer", "missing"]),
        (args(inputs, tiny_clip_checkpoint, "hf:facebook/dinov2-smal", "encoder.layer[1]"),
         ["Closest: facebook/dinov2-small", "huggingface"]),
    ]
    for argv, needles in cases:
        proc = run_cli(argv, env, expect=None, timeout=300)
        expected_code = 1 if "dinov2-smal" in " ".join(argv) else 2  # offline is a failure, not bad input
        assert proc.returncode == expected_code, (argv, proc.stderr[-2000:])
        for needle in needles:
            assert needle in proc.stderr, (needle, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr
    assert store_keys(env) == before_keys and runs(env) == before_runs


@pytest.mark.slow
def test_layers_need_no_weights_and_models_show_the_families(env, inputs) -> None:
    listing = run_cli(["layers", "resnet18"], env).stdout  # offline: builds the architecture only
    assert "layer4" in listing and "512x7x7" in listing
    assert "resnet18" not in str(list(Path(env["CDISSECT_CACHE_DIR"]).rglob("*.pth")))
    hf = run_cli(["layers", f"hf:{inputs['hf']}"], env).stdout
    assert "encoder.layer.1" in hf.replace("[", ".").replace("]", "") and "21x32" in hf
    clip = run_cli(["layers", "clip:ViT-B/16"], env).stdout
    assert "transformer.resblocks[11]" in clip
    timm_layers = run_cli(["layers", "timm:test_vit2"], env).stdout
    assert "blocks[7]" in timm_layers
    models = run_cli(["models"], env).stdout
    for name in ("timm:convnext_tiny", "hf:facebook/dinov2-small", "clip:ViT-B/16", "cdissect models --all"):
        assert name in models
    every = run_cli(["models", "--all"], env).stdout
    assert "timm:vit_small_patch14_reg4_dinov2.lvd142m" in every and len(every) > 5 * len(models)
