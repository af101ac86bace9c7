#!/usr/bin/env python3
"""Write tiny random-weight PE-Core CLIP checkpoints and parity fixtures for vidx's candle port.

Reference implementation: open_clip's `CustomTextCLIP` with timm's Perception Encoder vision trunk
(`Eva` with `global_pool="map"`: `norm` (ln_post) -> attention pooling -> `head`) and open_clip's
`TextTransformer` (causal mask, `ln_final`, EOT pooling at argmax(ids), raw `text_projection`),
exactly how open_clip builds `PE-Core-*` (its model_configs/PE-Core-*.json). The CLIP BPE tokenizer
is open_clip's SimpleTokenizer. Nothing is downloaded; the weights are random (spec: docs/models.md,
"PE-Core as a CLIP model" and "Making parity fixtures").

Two configurations, each in one of the checkpoint layouts vidx reads:

    cls    CLS token (RoPE grid offset 1) like PE-Core T/S/B/L. Written the way the hub's
           `timm/PE-Core-*` repos are: open_clip_config.json + open_clip_model.safetensors
           (keys `visual.trunk.*`, `text.*`, `logit_scale`).
    nocls  no CLS token (RoPE grid offset 0) like PE-Core G. Written the way the official
           `facebook/PE-Core-*` repos are: a torch pickle `PE-Core-vidx-nocls.pt` in
           perception_models' names (`visual.conv1`, `visual.transformer.resblocks.*`,
           `visual.attn_pool.attn.in_proj_*`, `visual.proj`, text keys at the root). The
           official repos carry no config; vidx resolves the official file names to a preset.
           A tiny model has no preset, so its open_clip_config.json sits beside the .pt.
           The script checks that timm's own converter (`eva._convert_pe`) maps these names
           back onto the timm trunk exactly.

All weights are rounded to float16 before the reference runs and stored as float16 (the 49,408-row
token embedding dominates the size); the reference and the port both compute in float32.

Output (services/model/tests/fixtures/pe_core/<name>/):
    open_clip_config.json, weights (see above)
    reference.safetensors   pixel_values [B,3,S,S] f32, image_u8 [B,S,S,3], token_ids [T,C] i64,
                            vision_tokens [B,N,W] (trunk after ln_post, before pooling),
                            image_features [B,E], text_features [T,E] (both unnormalised),
                            logits_per_image [B,T], logit_scale [] (the raw parameter)
    manifest.json           texts, configs, library versions
    ../tokenizer.json       CLIP tokenizer cases: text -> ids at context 77 and at the model's

CI does not run this script; its output is committed. Regenerate with:

    pip install -r scripts/requirements-fixtures.txt
    HF_HUB_OFFLINE=1 python3 scripts/make_pe_core_fixtures.py
"""
import json
import math
import os
import pathlib
import platform

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import open_clip
import safetensors
import safetensors.torch
import timm
import torch
from open_clip.factory import _MODEL_CONFIGS
from timm.models import register_model
from timm.models.eva import _convert_pe, _create_eva

OUT = pathlib.Path(__file__).resolve().parent.parent / "services/model/tests/fixtures/pe_core"
SIZE_LIMIT = 4_000_000
IMAGE = 48
PATCH = 8
CONTEXT = 12

TEXTS = [
    "a person slicing a tomato vertically",
    "A red car turns LEFT at the crossing!",
    "two dogs, 3 cats and 12 birds",
    "an extremely long description of a moment that goes on and on well past the context window",
]

# Tokenizer cases (ids from open_clip's SimpleTokenizer): case, punctuation, digits, apostrophes,
# accents, CJK, emoji, HTML entities and extra whitespace.
TOKENIZER_CASES = TEXTS + [
    "",
    "Hello,   World!!  ",
    "it's the dog's ball; they'll don't we've I'm you'd",
    "café naïve résumé Zürich",
    "東京の夜景",
    "🚗💨 fast car",
    "tom &amp; jerry &lt;3",
    "3.14159 and 2,718 and 42nd street",
    "slicing\ta\ntomato",
]


def tiny_pe(name, *, cls, embed_dim, depth, heads):
    def build(pretrained=False, **kwargs):
        args = dict(
            img_size=IMAGE,
            patch_size=PATCH,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=heads,
            mlp_ratio=4.0,
            global_pool="map",
            attn_type="rope",
            class_token=cls,
            use_pre_transformer_norm=True,
            use_rot_pos_emb=True,
            ref_feat_shape=(IMAGE // PATCH, IMAGE // PATCH),
            rope_grid_offset=1.0 if cls else 0.0,
            rope_grid_indexing="xy",
            attn_pool_num_heads=8,
            attn_pool_mlp_ratio=4.0,
            norm_layer=lambda dim, **kw: torch.nn.LayerNorm(dim, eps=1e-5, **kw),
        )
        return _create_eva(name, pretrained=pretrained, **dict(args, **kwargs))

    build.__name__ = name
    register_model(build)


# Vision heads follow PE-Core's rule (head_dim 64) so vidx resolves them from the width.
CONFIGS = {
    "cls": dict(cls=True, vision_width=64, vision_depth=2, vision_heads=1,
                text_width=8, text_heads=2, text_layers=2, embed_dim=24, seed=1),
    "nocls": dict(cls=False, vision_width=128, vision_depth=1, vision_heads=2,
                  text_width=8, text_heads=2, text_layers=2, embed_dim=32, seed=2),
}


def open_clip_config(name, spec):
    return {
        "embed_dim": spec["embed_dim"],
        "vision_cfg": {
            "image_size": IMAGE,
            "timm_model_name": f"vit_pe_core_vidx_{name}",
            "timm_model_pretrained": False,
            "timm_pool": "map",
            "timm_proj": None,
        },
        "text_cfg": {
            "context_length": CONTEXT,
            "vocab_size": 49408,
            "width": spec["text_width"],
            "heads": spec["text_heads"],
            "layers": spec["text_layers"],
        },
        "custom_text": True,
    }


@torch.no_grad()
def init_weights(model, seed):
    """O(1) activations (std-0.02 init hides bugs), then rounded to float16."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        rnd = torch.randn(tuple(p.shape), generator=gen, dtype=torch.float32)
        leaf = name.rsplit(".", 1)[-1]
        if name == "logit_scale":
            val = torch.tensor(math.log(1 / 0.07)) + 0.1 * rnd
        elif leaf == "bias" or leaf.endswith("_bias"):
            val = 0.2 * rnd
        elif p.dim() == 1 and "class_embedding" not in name:
            val = 1.0 + 0.2 * rnd  # LayerNorm weights
        elif any(k in name for k in ("token_embedding", "positional_embedding", "pos_embed",
                                     "cls_token", "latent")):
            val = 0.7 * rnd
        elif name.endswith("text_projection"):  # raw [width, embed] matrix
            val = rnd / math.sqrt(p.shape[0])
        else:  # Linear / conv weights [out, in...]: unit-variance outputs, a bit hot
            val = 1.3 * rnd / math.sqrt(int(np.prod(p.shape[1:])))
        p.copy_(val.half().float())


def to_official(state):
    """open_clip names -> perception_models names (what facebook/PE-Core-*.pt holds)."""
    out = {}
    for key, value in state.items():
        if key.startswith("visual.trunk."):
            k = key[len("visual.trunk."):]
            if k.startswith("attn_pool."):
                k = k[len("attn_pool."):]
                if k in ("q.weight", "q.bias"):
                    kind = k.split(".")[1]
                    kv = state[f"visual.trunk.attn_pool.kv.{kind}"]
                    out[f"visual.attn_pool.attn.in_proj_{kind}"] = torch.cat([value, kv], 0)
                    continue
                if k.startswith("kv."):
                    continue
                k = (k.replace("latent", "probe").replace("proj.", "attn.out_proj.")
                     .replace("norm.", "layernorm.").replace("mlp.fc1", "mlp.c_fc")
                     .replace("mlp.fc2", "mlp.c_proj"))
                out[f"visual.attn_pool.{k}"] = value
                continue
            if k == "head.weight":
                out["visual.proj"] = value.t().contiguous()
                continue
            if k == "head.bias":
                assert torch.count_nonzero(value) == 0, "the official layout has no head bias"
                continue
            if k == "cls_token":
                out["visual.class_embedding"] = value.reshape(-1)
                continue
            if k == "pos_embed":
                out["visual.positional_embedding"] = value[0]
                continue
            k = (k.replace("patch_embed.proj", "conv1").replace("norm_pre", "ln_pre")
                 .replace("blocks.", "transformer.resblocks.").replace("attn.qkv.", "attn.in_proj_")
                 .replace("attn.proj", "attn.out_proj").replace("norm1", "ln_1")
                 .replace("norm2", "ln_2").replace("mlp.fc1", "mlp.c_fc").replace("mlp.fc2", "mlp.c_proj"))
            if k.startswith("norm."):
                k = "ln_post." + k[len("norm."):]
            out[f"visual.{k}"] = value
        elif key.startswith("text."):
            out[key[len("text."):]] = value
        else:
            out[key] = value
    return out


def check_official_roundtrip(official, trunk_state):
    """timm's converter must map the official names back onto the trunk, tensor for tensor."""
    converted = _convert_pe(official, None, prefix="visual.")
    assert set(converted) == set(trunk_state), sorted(set(converted) ^ set(trunk_state))
    for key, value in trunk_state.items():
        assert torch.equal(converted[key].to(value.dtype), value), key


def make_images(seed):
    gen = np.random.default_rng(seed)
    y, x = np.mgrid[0:IMAGE, 0:IMAGE]
    images = []
    for i in range(2):
        base = np.stack([(x * (3 + i) + y) % 256, (y * (5 - i)) % 256, (x * y + 40 * i) % 256], -1)
        noise = gen.integers(0, 40, size=base.shape)
        images.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return np.stack(images)


@torch.no_grad()
def run_config(name, spec):
    out_dir = OUT / name
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.iterdir():
        stale.unlink()
    tiny_pe(f"vit_pe_core_vidx_{name}", cls=spec["cls"], embed_dim=spec["vision_width"],
            depth=spec["vision_depth"], heads=spec["vision_heads"])
    model_name = f"PE-Core-vidx-{name}"
    config = open_clip_config(name, spec)
    _MODEL_CONFIGS[model_name] = config
    model = open_clip.create_model(model_name, pretrained=None)
    model.eval()
    init_weights(model, spec["seed"])
    if not spec["cls"]:
        # The official layout has no head bias (timm's converter writes zeros).
        model.visual.trunk.head.bias.zero_()

    images_u8 = make_images(spec["seed"])
    pixels = torch.from_numpy(images_u8).permute(0, 3, 1, 2).float().div(255.0)
    pixels = (pixels - 0.5) / 0.5  # PE: mean = std = 0.5, no crop (the frames are already square)
    tokenizer = open_clip.get_tokenizer(model_name)
    assert tokenizer.context_length == CONTEXT
    token_ids = tokenizer(TEXTS)

    trunk = model.visual.trunk
    vision_tokens = trunk.forward_features(pixels)  # blocks, then `norm` (ln_post)
    image_features = model.encode_image(pixels)
    text_features = model.encode_text(token_ids)
    # logits_per_image = exp(logit_scale) * cos
    ni = image_features / image_features.norm(dim=-1, keepdim=True)
    nt = text_features / text_features.norm(dim=-1, keepdim=True)
    logits = model.logit_scale.exp() * ni @ nt.t()

    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    (out_dir / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": config, "preprocess_cfg": {
            "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear",
            "resize_mode": "squash"}}, indent=2) + "\n")
    if spec["cls"]:
        safetensors.torch.save_file(state, out_dir / "open_clip_model.safetensors")
        weights = "open_clip_model.safetensors"
    else:
        official = to_official(state)
        trunk_state = {k[len("visual.trunk."):]: v for k, v in state.items() if k.startswith("visual.trunk.")}
        check_official_roundtrip(official, trunk_state)
        weights = f"{model_name}.pt"
        torch.save(official, out_dir / weights)

    reference = {
        "pixel_values": pixels.contiguous(),
        "image_u8": torch.from_numpy(images_u8).contiguous(),
        "token_ids": token_ids.to(torch.int64).contiguous(),
        "vision_tokens": vision_tokens.detach().contiguous(),
        "image_features": image_features.detach().contiguous(),
        "text_features": text_features.detach().contiguous(),
        "logits_per_image": logits.detach().contiguous(),
        "logit_scale": model.logit_scale.detach().reshape(()).float().contiguous(),
    }
    safetensors.torch.save_file(reference, out_dir / "reference.safetensors")
    manifest = {
        "model": model_name,
        "weights": weights,
        "texts": TEXTS,
        "open_clip_config": config,
        "vision": {k: spec[k] for k in ("cls", "vision_width", "vision_depth", "vision_heads")}
                  | {"image_size": IMAGE, "patch_size": PATCH, "attn_pool_heads": 8},
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                    for k, v in reference.items()},
        "notes": "vision_tokens = trunk.forward_features (blocks, then ln_post); image/text "
                 "features unnormalised; logit_scale is the raw (log) parameter",
        "versions": versions(),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def tokenizer_cases():
    cases = []
    for context in (77, CONTEXT):
        tok = open_clip.tokenizer.SimpleTokenizer(context_length=context)
        ids = tok(TOKENIZER_CASES)
        for text, row in zip(TOKENIZER_CASES, ids.tolist()):
            cases.append({"text": text, "context_length": context, "ids": row})
    # One case per line, padding dropped (the ids are zero-padded to the context length).
    lines = [json.dumps({"text": c["text"], "context_length": c["context_length"],
                         "ids": [i for i in c["ids"] if i != 0]}, ensure_ascii=False) for c in cases]
    (OUT / "tokenizer.json").write_text('{"cases": [\n' + ",\n".join(lines) + "\n]}\n")


def versions():
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "open_clip": open_clip.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, spec in CONFIGS.items():
        run_config(name, spec)
    tokenizer_cases()
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(f"{p.stat().st_size:>9}  {p.relative_to(OUT)}")
    print(f"{total:>9}  total")
    if total > SIZE_LIMIT:
        raise SystemExit(f"fixtures are {total} bytes, over the {SIZE_LIMIT} limit")


if __name__ == "__main__":
    main()
