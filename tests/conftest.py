"""Shared fixtures: small synthetic ViT/DeiT models with every parameter randomised (so biases and
LayerNorm affines are non-trivial), and the real data under ../shared/data."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from vitshrink.compat import ensure_timm_importable

ensure_timm_importable()
warnings.filterwarnings("ignore", category=UserWarning)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers share the two cores (README: `pytest -n 2`): one intra-op thread each, or torch's pools spin against
    # each other (measured: the token/export/exactness/swin modules in 225 s with 2 threads per worker, 139 s with 1).
    # Child processes (the CLI, exports, latency workers) inherit one thread too; engines a test times are given
    # their threads explicitly (ONNX Runtime, OpenVINO, torch.set_num_threads in the latency worker).
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VITSHRINK_SHARED_DATA", REPO.parent / "shared" / "data"))
DEIT_TINY_CKPT = SHARED / "deit_tiny_patch16_224.in1k.safetensors"
IMAGENET_VAL = SHARED / "imagenet-sample" / "val"

SMALL = dict(img_size=32, patch_size=8, embed_dim=48, depth=4, num_heads=4, mlp_ratio=2.0, num_classes=10)


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter ~ N(0, 0.2^2), LayerNorm weights ~ N(1, 0.3^2): no bias is zero, and the
    model stays as well conditioned as a trained ViT (fp32 vs fp64 logits differ by ~4e-6 here; with
    std 0.5 timm's own fp32 error reaches 8e-5, too close to the 1e-4 exactness tolerance)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.3 * noise if ("norm" in name and name.endswith("weight")) else 0.2 * noise)
    return model.eval()


def small_vit(distilled: bool = False, seed: int = 0, **overrides) -> torch.nn.Module:
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    cls = VisionTransformerDistilled if distilled else VisionTransformer
    return randomise(cls(**{**SMALL, **overrides}), seed)


@pytest.fixture(scope="session")
def small_model():
    from vitshrink.frontends.timm import from_timm

    m = small_vit()
    return m, from_timm(m, "small_vit")


@pytest.fixture(scope="session")
def small_distilled():
    from vitshrink.frontends.timm import from_timm

    m = small_vit(distilled=True, seed=1)
    return m, from_timm(m, "small_deit_distilled")


def images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn((n, 3, size, size), generator=torch.Generator().manual_seed(seed))


def _missing(reason: str):
    """Skip -- or, when the ``CI`` environment variable is set, fail: in CI a missing data directory or
    optional dependency must not turn the claims that need it into silent skips."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: a missing requirement fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def require_shared():
    if not DEIT_TINY_CKPT.is_file() or not IMAGENET_VAL.is_dir():
        _missing(f"real data not found at {SHARED} (weights and images live in ../shared/data)")


def need(module: str, extra: str = "importers"):
    """``pytest.importorskip`` that fails under CI: the module is in the ``[extra]`` the tests install."""
    try:
        return __import__(module)
    except ImportError:
        _missing(f"{module} is not installed (it is in the [{extra}] extra)")
