"""A diffusers-layout SD 1.x model written as one file in the original (CompVis/LDM) key layout,
the layout Automatic1111 and Civitai checkpoints use, so the single-file loader can be tested on
a model whose weights are known. The inverse of diffusers' ``convert_ldm_*`` functions for the
blocks our tiny models have; key names follow the original ``openaimodel`` and ``autoencoder``
modules."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."

# diffusers → original, inside a ResNet block of the UNet.
UNET_RESNET = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
]
UNET_TOP = [
    ("add_embedding.linear_1.", "label_emb.0.0."),  # SDXL's text_time conditioning
    ("add_embedding.linear_2.", "label_emb.0.2."),
    ("time_embedding.linear_1.", "time_embed.0."),
    ("time_embedding.linear_2.", "time_embed.2."),
    ("conv_in.", "input_blocks.0.0."),
    ("conv_norm_out.", "out.0."),
    ("conv_out.", "out.2."),
]
VAE_INNER = [
    ("conv_shortcut", "nin_shortcut"),
    ("conv_norm_out", "norm_out"),
    ("mid_block.attentions.0.", "mid.attn_1."),
]
VAE_ATTENTION = [
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
]


def unet_block_prefixes(config: dict) -> list[tuple[str, str]]:
    """(diffusers prefix, original prefix) for every block of a UNet2DConditionModel config."""
    per = int(config["layers_per_block"])
    down = list(config["down_block_types"])
    up = list(config["up_block_types"])
    pairs = []
    for i, kind in enumerate(down):
        for j in range(per):
            pairs.append(
                (f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{(per + 1) * i + j + 1}.0.")
            )
            if "CrossAttn" in kind:
                pairs.append(
                    (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{(per + 1) * i + j + 1}.1.")
                )
        if i < len(down) - 1:
            pairs.append(
                (
                    f"down_blocks.{i}.downsamplers.0.conv.",
                    f"input_blocks.{(per + 1) * (i + 1)}.0.op.",
                )
            )
    for i, kind in enumerate(up):
        for j in range(per + 1):
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{(per + 1) * i + j}.0."))
            if "CrossAttn" in kind:
                pairs.append(
                    (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{(per + 1) * i + j}.1.")
                )
        if i < len(up) - 1:
            slot = 2 if "CrossAttn" in kind else 1
            pairs.append(
                (f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{(per + 1) * i + per}.{slot}.")
            )
    pairs.append(("mid_block.attentions.0.", "middle_block.1."))
    pairs += [(f"mid_block.resnets.{j}.", f"middle_block.{2 * j}.") for j in range(2)]
    return pairs


def unet_to_original(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    out = {}
    blocks = unet_block_prefixes(config)
    for key, value in state.items():
        name = key
        for ours, theirs in UNET_TOP:
            if name.startswith(ours):
                name = theirs + name[len(ours) :]
        for ours, theirs in blocks:
            if name.startswith(ours):
                rest = name[len(ours) :]
                if "resnets" in ours:
                    for a, b in UNET_RESNET:
                        rest = rest.replace(a, b)
                name = theirs + rest
                break
        out[UNET_PREFIX + name] = value
    return out


def vae_to_original(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    blocks = len(config["block_out_channels"])
    pairs = []
    for i in range(blocks):
        pairs += [(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.")]
        pairs += [(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")]
        pairs += [(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{blocks - 1 - i}.block.")]
        pairs += [
            (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{blocks - 1 - i}.upsample.")
        ]
    pairs += [(f"mid_block.resnets.{i}.", f"mid.block_{i + 1}.") for i in range(2)]
    out = {}
    for key, value in state.items():
        name = key
        for ours, theirs in pairs:
            name = name.replace(ours, theirs)
        for ours, theirs in VAE_INNER:
            name = name.replace(ours, theirs)
        if "mid.attn_1." in name:
            for ours, theirs in VAE_ATTENTION:
                name = name.replace(ours, theirs)
            if value.ndim == 2:  # the original attention's q/k/v/proj_out are 1×1 convolutions
                value = value[:, :, None, None]
        out[VAE_PREFIX + name] = value
    return out


OPEN_CLIP_PREFIX = "cond_stage_model.model."
QKV = ("q_proj", "k_proj", "v_proj")  # the order OpenCLIP stacks them in
OPEN_CLIP_NAMES = [
    ("embeddings.token_embedding.weight", "token_embedding.weight"),
    ("embeddings.position_embedding.weight", "positional_embedding"),
    ("final_layer_norm.", "ln_final."),
    ("encoder.layers.", "transformer.resblocks."),
    ("layer_norm1", "ln_1"),
    ("layer_norm2", "ln_2"),
    (".fc1.", ".c_fc."),
    (".fc2.", ".c_proj."),
    (".self_attn.", ".attn."),
]


def open_clip_to_original(
    state: dict[str, torch.Tensor], prefix: str = OPEN_CLIP_PREFIX
) -> dict[str, torch.Tensor]:
    """SD 2.x's (and SDXL's second) text encoder in OpenCLIP's layout: q, k and v stacked into
    ``in_proj``; SDXL's projection as OpenCLIP's ``text_projection`` matrix (x @ it)."""
    out: dict[str, torch.Tensor] = {}
    stacked: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
            continue
        name = key.removeprefix("text_model.")
        for ours, theirs in OPEN_CLIP_NAMES:
            name = name.replace(ours, theirs)
        for part in QKV:
            if f".{part}." in name:
                base, kind = name.split(f".{part}.")
                stacked.setdefault(f"{base}.in_proj_{kind}", {})[part] = value
                break
        else:
            out[prefix + name] = value
    for key, parts in stacked.items():
        out[prefix + key] = torch.cat([parts[part] for part in QKV])
    return out


SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."


def sdxl_text_to_original(model) -> dict[str, torch.Tensor]:  # model: BaseModel
    """SDXL's two text encoders as SGM stores them: CLIP ViT-L under embedders.0, OpenCLIP's
    layout under embedders.1."""
    assert model.text_encoder_2 is not None
    first = {SDXL_CLIP_PREFIX + k: v for k, v in model.text_encoder.state_dict().items()}
    return {
        **first,
        **open_clip_to_original(model.text_encoder_2.state_dict(), SDXL_OPEN_CLIP_PREFIX),
    }


def write_original_checkpoint(model, path: Path) -> Path:  # model: BaseModel
    """``model``'s UNet, VAE and text encoder(s) (CLIP for SD 1.x, OpenCLIP's layout for SD 2.x,
    both for SDXL): one safetensors file, the original layout."""
    text = model.text_encoder.state_dict()
    if model.is_sdxl:
        texts = sdxl_text_to_original(model)
    elif model.family == "sd2":
        texts = open_clip_to_original(text)
    else:
        texts = {CLIP_PREFIX + k: v for k, v in text.items()}
    state = {
        **unet_to_original(model.unet.state_dict(), dict(model.unet.config)),
        **vae_to_original(model.vae.state_dict(), dict(model.vae.config)),
        **texts,
    }
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def config_folder_of(model_dir: Path, out: Path) -> Path:
    """``model_dir`` without its weights: the configs and the tokenizer, as ``--config`` wants."""
    for file in model_dir.rglob("*"):
        if file.is_file() and file.suffix in (".json", ".txt"):
            (out / file.relative_to(model_dir)).parent.mkdir(parents=True, exist_ok=True)
            (out / file.relative_to(model_dir)).write_bytes(file.read_bytes())
    return out
