"""Malignancy classifier backbones, selectable by name (MONAI networks + a 1-logit head), and LoRA for the ViT.

Every backbone takes the same input (2 channels: windowed HU + the candidate's mask, ``config.CLS_PATCH``) and
returns one malignancy logit, so the pipeline, Grad-CAM and the bundle treat them alike. Each names the module
whose output (N, C, d, h, w) Grad-CAM reads (``gradcam_layer``): the transformers reshape their token sequence into
such a map in an explicit ``token_map`` module, so torchcam can hook it like a convolution's output.
"""

from __future__ import annotations

import math

import torch
from monai.networks.nets.resnet import ResNet

from pipelines.lung_nodule.config import CLS_PATCH

DEFAULT_BACKBONE = "resnet10"  # what bundles without "classifier_backbone" in their metadata hold
# Small on purpose: the shipped weights stay a few MB and a chest runs in seconds on 2 CPU threads.
CLASSIFIER_PLANES = [8, 16, 32, 64]
IN_CHANNELS = 2  # windowed HU + the segmenter's mask of this candidate

# ViT: 8^3 patches on the 32^3 input = 64 tokens (4^3 map). 4^3 patches (512 tokens) cost 5 s per training
# step of 16 patches on one CPU thread, ~20x more: out of this budget.
VIT_PATCH = 8
VIT_HIDDEN = 96
VIT_LAYERS = 4
VIT_HEADS = 4
LORA_RANK = 4


def _resnet(block: str, layers: list[int]) -> torch.nn.Module:
    return ResNet(
        block=block,
        layers=layers,
        block_inplanes=CLASSIFIER_PLANES,
        spatial_dims=3,
        n_input_channels=IN_CHANNELS,
        conv1_t_size=3,
        conv1_t_stride=2,
        no_max_pool=True,
        num_classes=1,
    )


class ViTClassifier(torch.nn.Module):
    """MONAI ViT encoder; the patch tokens reshaped into a (N, C, 4, 4, 4) map, mean-pooled, linear head."""

    def __init__(self) -> None:
        super().__init__()
        from monai.networks.nets.vit import ViT  # needs einops (MONAI's attention block)

        self.vit = ViT(
            in_channels=IN_CHANNELS,
            img_size=CLS_PATCH,
            patch_size=VIT_PATCH,
            hidden_size=VIT_HIDDEN,
            mlp_dim=2 * VIT_HIDDEN,
            num_layers=VIT_LAYERS,
            num_heads=VIT_HEADS,
            classification=False,
        )
        self.grid = tuple(n // VIT_PATCH for n in CLS_PATCH)
        self.token_map = torch.nn.Identity()  # Grad-CAM target: the last block's tokens as a 3D map
        self.head = torch.nn.Linear(VIT_HIDDEN, 1)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.vit(x)
        tokens: torch.Tensor = out  # (N, tokens, hidden), final LayerNorm applied
        return tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.tokens(x)
        fmap = self.token_map(t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *self.grid))
        logit: torch.Tensor = self.head(fmap.flatten(2).mean(-1))
        return logit


class LoRALinear(torch.nn.Module):
    """``base(x) + (alpha / r) * B(A(x))`` with ``base`` frozen; B starts at zero, so the adapter starts as a no-op."""

    def __init__(self, base: torch.nn.Linear, rank: int = LORA_RANK, alpha: float | None = None) -> None:
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.lora_a = torch.nn.Linear(base.in_features, rank, bias=False)
        self.lora_b = torch.nn.Linear(rank, base.out_features, bias=False)
        torch.nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        torch.nn.init.zeros_(self.lora_b.weight)
        self.scale = (alpha if alpha is not None else 2.0 * rank) / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.base(x) + self.scale * self.lora_b(self.lora_a(x))
        return out


class ViTLoRAClassifier(ViTClassifier):
    """The ViT with low-rank adapters on every block's attention ``qkv`` and ``out_proj`` linears.

    ``freeze_backbone`` leaves only the adapters, the final LayerNorm and the head trainable (what "fine-tuned
    with LoRA" means here: the ViT's own weights come from a self-supervised pretext run by the trainer on the
    same patches, since no pretrained weights can be downloaded here; see train_malignancy.py).
    """

    def __init__(self) -> None:
        super().__init__()
        for block in self.vit.blocks:
            attn = block.get_submodule("attn")
            for name in ("qkv", "out_proj"):
                base = attn.get_submodule(name)
                assert isinstance(base, torch.nn.Linear)  # MONAI SABlock's projections
                setattr(attn, name, LoRALinear(base))

    def freeze_backbone(self) -> None:
        for name, p in self.named_parameters():
            p.requires_grad_("lora_" in name or name.startswith("head.") or name.startswith("vit.norm."))


class SwinClassifier(torch.nn.Module):
    """SwinUNETR's encoder (MONAI ``SwinTransformer``, feature size 12): its deepest map pooled, linear head.

    On a 32^3 patch the stages are 16^3, 8^3, 4^3, 2^3, 1^3; Grad-CAM reads stage 1 (``swin.layers1.0``, 8^3).
    """

    FEATURE_SIZE = 12

    def __init__(self) -> None:
        super().__init__()
        from monai.networks.nets.swin_unetr import SwinTransformer  # needs einops

        self.swin = SwinTransformer(
            in_chans=IN_CHANNELS,
            embed_dim=self.FEATURE_SIZE,
            window_size=(4, 4, 4),
            patch_size=(2, 2, 2),
            depths=(2, 2, 2, 2),
            num_heads=(3, 6, 12, 24),
            spatial_dims=3,
        )
        self.head = torch.nn.Linear(16 * self.FEATURE_SIZE, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deepest = self.swin(x, normalize=True)[-1]  # (N, 16 * feature size, 1, 1, 1) on 32^3
        logit: torch.Tensor = self.head(deepest.flatten(2).mean(-1))
        return logit


BACKBONES: dict[str, str] = {
    # name -> Grad-CAM target layer
    "resnet10": "layer2",  # basic blocks [1,1,1,1]; layer2 keeps an 8^3 map (deeper layers are 4^3, too coarse)
    "resnet18": "layer2",  # basic blocks [2,2,2,2]
    "resnet50": "layer2",  # bottleneck blocks [3,4,6,3] (x4 expansion: 32-256 channels)
    "vit": "token_map",  # trained from scratch, all weights
    "vit-lora": "token_map",  # self-supervised pretext, then LoRA adapters + head
    "swinunetr": "swin.layers1.0",
}


def build_classifier(backbone: str = DEFAULT_BACKBONE) -> torch.nn.Module:
    """The malignancy classifier by backbone name (``BACKBONES``): 2-channel 32^3 patch in, 1 logit out."""
    if backbone == "resnet10":
        return _resnet("basic", [1, 1, 1, 1])
    if backbone == "resnet18":
        return _resnet("basic", [2, 2, 2, 2])
    if backbone == "resnet50":
        return _resnet("bottleneck", [3, 4, 6, 3])
    if backbone == "vit":
        return ViTClassifier()
    if backbone == "vit-lora":
        return ViTLoRAClassifier()
    if backbone == "swinunetr":
        return SwinClassifier()
    raise ValueError(f"unknown classifier backbone {backbone!r}; one of {', '.join(BACKBONES)}")


def gradcam_layer(backbone: str) -> str:
    if backbone not in BACKBONES:
        raise ValueError(f"unknown classifier backbone {backbone!r}; one of {', '.join(BACKBONES)}")
    return BACKBONES[backbone]
