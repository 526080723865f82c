"""Model families: the one place that knows which families vitshrink compiles and which module of each
layer serves each of them -- and the operations whose work depends on the family.

A family is one module per layer, each with the same functions as every other family's module of that
layer (:class:`Family` lists them). Adding a family (Eva, CaiT, SwinV2 ...) is one new module per layer
plus one entry in :data:`FAMILIES`; nothing else asks "which family is this?" -- it calls
:func:`family_of`.

The public operations here (``vitshrink.import_model``, ``resolve_spec``, ``apply_spec``,
``build_module``, ``reference_forward``) take any family's IR and hand it to its family's module.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping, Optional, Protocol, Union, runtime_checkable

import torch
from torch import Tensor, nn

from .codegen import swin as codegen_swin
from .codegen import vit as codegen_vit
from .errors import ModelError
from .frontends import timm_cait, timm_eva, timm_relpos, timm_swin, timm_swinv2, timm_vit
from .frontends.timm import configure as configure_like, create_model, fit_classifier, fit_pos_embed, load_state, \
    read_sidecar, read_state_dict
from .ir.swin import SwinIR
from .ir.vit import ViTIR
from .masks import swin as masks_swin
from .masks import vit as masks_vit
from .passes import swin as passes_swin
from .passes import vit as passes_vit
from .reference import swin as reference_swin
from .reference import vit as reference_vit
from .report import swin as report_swin
from .report import vit as report_vit
from .spec import swin as spec_swin
from .spec import vit as spec_vit
from .spec.format import Spec
from .spec.resolved import ResolvedSpec

IR = Union[ViTIR, SwinIR]
#: the seed of a model's random weights when no checkpoint is given (recorded in report.json)
RANDOM_INIT_SEED = 0


@runtime_checkable
class FrontendLayer(Protocol):
    """``Family.frontend``: a framework model -> the family's IR."""
    TESTED_MODELS: Any

    def accepts(self, model): ...
    def from_timm(self, model, name=None): ...
    def timm_blocks(self, model): ...


@runtime_checkable
class SpecLayer(Protocol):
    """``Family.spec``: mask names and shapes, a spec resolved against the IR."""
    def mask_shapes(self, ir): ...
    def resolve(self, spec, ir, tensors): ...
    def block_name(self, ir, source_index): ...


@runtime_checkable
class PassesLayer(Protocol):
    """``Family.passes``: IR -> IR, and the same passes as checkable steps (:mod:`vitshrink.passes.steps`)."""
    def apply_spec(self, ir, spec, tensors): ...
    def lay_out(self, ir, heads, token_layout): ...
    def steps(self, spec, tensors): ...
    def layout_steps(self, heads, token_layout): ...


@runtime_checkable
class CodegenLayer(Protocol):
    """``Family.codegen``: IR -> architecture dict -> nn.Module."""
    ARCH_FORMAT: str

    def architecture(self, ir): ...
    def build_module(self, ir, share, trace): ...


@runtime_checkable
class ReferenceLayer(Protocol):
    """``Family.reference``: the masked dense reference."""
    def reference_forward(self, dense, spec, images, tensors, trace, residuals): ...


@runtime_checkable
class ReportLayer(Protocol):
    """``Family.report``: report.json ``structure``."""
    def block_table(self, dense, pruned): ...


@runtime_checkable
class MasksLayer(Protocol):
    """``Family.masks``: the L1 producer of ``vitshrink masks``."""
    def l1_spec(self, ir, heads, mlp, embed): ...


#: the Protocol each layer's module of every family satisfies (checked by tests/test_families.py)
LAYERS = {"frontend": FrontendLayer, "spec": SpecLayer, "passes": PassesLayer, "codegen": CodegenLayer,
          "reference": ReferenceLayer, "report": ReportLayer, "masks": MasksLayer}


@dataclass(frozen=True)
class Family:
    """One model family: its IR class and, per layer, the module that serves it. Every module of a
    layer has the same functions:

    - ``frontend``: ``accepts(model) -> bool``, ``from_timm(model, name) -> IR``,
      ``timm_blocks(model) -> [(state-dict prefix, block)]``, ``TESTED_MODELS``;
    - ``spec``: ``mask_shapes(ir) -> {name: shape}``, ``resolve(spec, ir, tensors) -> ResolvedSpec``,
      ``block_name(ir, source_index) -> str`` (the canonical name prefix of a block);
    - ``passes``: ``apply_spec(ir, resolved, tensors) -> IR``, ``lay_out(ir, heads, token_layout) -> IR``,
      and the same as :class:`~vitshrink.passes.steps.Step` lists: ``steps(resolved, tensors)``,
      ``layout_steps(heads, token_layout)``;
    - ``codegen``: ``ARCH_FORMAT``, ``architecture(ir) -> dict``, ``build_module(ir, share, trace)``;
    - ``reference``: ``reference_forward(dense, resolved, images, tensors, trace, residuals)``;
    - ``report``: ``block_table(dense, pruned) -> dict`` (report.json ``structure``);
    - ``masks``: ``l1_spec(ir, heads, mlp, embed) -> Spec`` (``vitshrink masks``).

    ``title``: how messages name the family; ``token_pruning``: token masks and rules apply (a windowed
    family needs every token).
    """

    name: str
    title: str
    ir: type
    frontend: ModuleType
    spec: ModuleType
    passes: ModuleType
    codegen: ModuleType
    reference: ModuleType
    report: ModuleType
    masks: ModuleType
    token_pruning: bool
    #: why token masks and rules do not apply, where ``token_pruning`` is off (``vitshrink masks --tokens`` says it)
    no_tokens_because: str = ""


VIT = Family(name="vit", title="ViT/DeiT", ir=ViTIR, frontend=timm_vit, spec=spec_vit, passes=passes_vit,
             codegen=codegen_vit, reference=reference_vit, report=report_vit, masks=masks_vit, token_pruning=True)
SWIN = Family(name="swin", title="Swin", ir=SwinIR, frontend=timm_swin, spec=spec_swin, passes=passes_swin,
              codegen=codegen_swin, reference=reference_swin, report=report_swin, masks=masks_swin, token_pruning=False,
              no_tokens_because="its shifted windows need every token")
#: timm's ``Eva`` class (EVA-02, DINOv3, Perception Encoder, ``vit_*_rope_*``): the ViT IR with rotary
#: position embedding -- its own frontend, every other layer the ViT one
EVA = replace(VIT, name="eva", title="Eva (EVA-02, DINOv3, RoPE ViTs)", frontend=timm_eva, token_pruning=False,
              no_tokens_because="rotary position embedding belongs to each token's position")
#: ViTs with a relative position bias: BEiT / BEiT v2 and ``VisionTransformerRelPos`` (``vit_relpos_*``)
RELPOS = replace(VIT, name="relpos", title="ViT with relative position bias (BEiT, vit_relpos)", frontend=timm_relpos,
                 token_pruning=False, no_tokens_because="a relative position bias belongs to each token's position")
#: Swin V2 (cosine attention, continuous position bias, res-post-norm): the Swin IR, its own frontend
SWINV2 = replace(SWIN, name="swinv2", title="Swin V2", frontend=timm_swinv2)
#: CaiT: the ViT IR with talking-heads attention and class-attention blocks (the class token joins late)
CAIT = replace(VIT, name="cait", title="CaiT", frontend=timm_cait, token_pruning=False,
               no_tokens_because="talking-heads attention and class-attention blocks")
#: every family vitshrink compiles, in the order a timm model is offered to their frontends (an IR or an
#: arch.json finds the first family of its class: the ViT one for Eva)
FAMILIES: tuple[Family, ...] = (VIT, SWIN, EVA, RELPOS, SWINV2, CAIT)


def family_of(obj: Any) -> Family:
    """The family of an IR, a framework model (a timm module) or an architecture dict (``arch.json``): the one
    its frontend stamped on the IR (``ir.meta["family"]``, carried into ``arch.json``), else the first family
    whose IR class / architecture format / frontend matches.

    Raises:
        ModelError: no family handles it (the families are named).
    """
    named = (getattr(obj, "meta", None) or {}).get("family") if not isinstance(obj, dict) else obj.get("family")
    for f in FAMILIES:  # the family its frontend stamped on the IR (meta.family; arch.json "family")
        if named == f.name and (isinstance(obj, f.ir) or (isinstance(obj, dict) and obj.get("format") == f.codegen.ARCH_FORMAT)):
            return f
    for f in FAMILIES:
        if isinstance(obj, f.ir):
            return f
        if isinstance(obj, dict) and obj.get("format") == f.codegen.ARCH_FORMAT:
            return f
        if isinstance(obj, nn.Module) and f.frontend.accepts(obj):
            return f
    what = type(obj).__name__ if not isinstance(obj, dict) else f"architecture {obj.get('format')!r}"
    raise ModelError(f"unsupported model class {what}: vitshrink compiles these families: "
                     + ", ".join(f"{f.title} ({f.ir.__name__})" for f in FAMILIES))


def import_model(name: str, checkpoint: Optional[str | Path] = None, state_dict: Optional[dict[str, Tensor]] = None,
                 configure=None, img_size: Optional[tuple[int, int]] = None,
                 model_kwargs: Optional[dict] = None, num_classes: Optional[int] = None
                 ) -> tuple[nn.Module, IR, dict[str, Tensor]]:
    """Create timm model ``name``, load its weights and translate it with its family's frontend.

    Args:
        name: timm model name (any family of :data:`FAMILIES`).
        checkpoint: a weights file (safetensors or a pickled state dict).
        state_dict: weights already in memory (e.g. from :func:`vitshrink.importers.import_checkpoint`);
            neither: random weights drawn with seed :data:`RANDOM_INIT_SEED`, with a warning.
        configure: called on the timm model before translation (an importer's
            :meth:`~vitshrink.importers.base.ImportResult.configure`: e.g. the source's LayerNorm eps).
        img_size: (H, W) to create the model at (timm's ``img_size=``); the weights' absolute position
            embedding is resampled to it as timm resamples it (:func:`~vitshrink.frontends.timm.fit_pos_embed`).
        model_kwargs: more timm ``create_model`` arguments (an importer's
            :attr:`~vitshrink.importers.base.ImportResult.model_kwargs`: an HF tower's ``num_classes``).
        num_classes: ``--num-classes`` (0: a feature extractor); None: the checkpoint's classifier decides
            (:func:`~vitshrink.frontends.timm.fit_classifier`). A timm checkpoint's label names are read from the
            ``config.json`` beside it, and what ``vitshrink import`` wrote there (:func:`~vitshrink.frontends.timm.read_sidecar`).
    Returns:
        (timm model in eval mode, dense IR -- :class:`~vitshrink.ir.vit.ViTIR`,
        :class:`~vitshrink.ir.swin.SwinIR` --, extra checkpoint tensors not in the model).
    Raises:
        ModelError: unknown name, a family vitshrink does not handle, an option it refuses (named);
        CheckpointError: unreadable checkpoint, a missing key or a shape mismatch (named).
    """
    random = state_dict is None and checkpoint is None
    kwargs = {**(model_kwargs or {}), **({"img_size": tuple(img_size)} if img_size else {}),
              **({"num_classes": num_classes} if random and num_classes is not None else {})}
    with torch.random.fork_rng():  # random weights are seeded (two compiles agree); the caller's RNG is untouched
        torch.manual_seed(RANDOM_INIT_SEED)
        model = create_model(name, **kwargs)
    family = family_of(model)
    extras: dict[str, Tensor] = {}
    if state_dict is None and checkpoint is not None:
        state_dict = read_state_dict(checkpoint)
    if state_dict is not None:
        fit_classifier(model, state_dict, num_classes)
        if img_size:
            state_dict = fit_pos_embed(model, state_dict)
        extras = load_state(model, state_dict, f"imported weights for {name}" if checkpoint is None else f"checkpoint '{checkpoint}'")
    elif random:
        warnings.warn(
            f"no checkpoint given: {name} has RANDOM weights (seed {RANDOM_INIT_SEED}; latency and exactness are "
            "meaningful, accuracy is not)", stacklevel=2,
        )
    if checkpoint is not None:
        configure_like(model, **read_sidecar(checkpoint))
    if configure is not None:
        configure(model)
    return model, family.frontend.from_timm(model, name), extras


def from_timm(model: nn.Module, name: Optional[str] = None) -> IR:
    """Translate a timm model of any family into its IR (a copy of its weights)."""
    return family_of(model).frontend.from_timm(model, name)


def mask_shapes(ir: IR) -> dict[str, tuple]:
    """Canonical mask name -> full shape, for the dense model ``ir`` (names of its family's spec module)."""
    return family_of(ir).spec.mask_shapes(ir)


def resolve_spec(spec: Spec, ir: IR, tensors: Optional[dict[str, Tensor]] = None) -> ResolvedSpec:
    """Validate ``spec`` against the dense ``ir`` and expand it to full-shape bool masks
    (:func:`vitshrink.spec.vit.resolve`, :func:`vitshrink.spec.swin.resolve`).

    Args:
        tensors: checkpoint tensors the settings may reference (exit classifiers, token predictors).
    Raises:
        SpecError: naming the key (unknown name, wrong shape, an index out of range, an empty head set ...).
    """
    return family_of(ir).spec.resolve(spec, ir, tensors)


def apply_spec(ir: IR, spec: ResolvedSpec, tensors: Optional[Mapping[str, Tensor]] = None) -> IR:
    """Every structural (and token) pass a resolved ``spec`` asks for, applied to the dense ``ir``:
    the pruned IR, not yet laid out (:func:`vitshrink.passes.vit.apply_spec`, :func:`vitshrink.passes.swin.apply_spec`)."""
    return family_of(ir).passes.apply_spec(ir, spec, tensors)


def build_module(ir: IR, share: bool = False, trace: bool = False) -> nn.Module:
    """IR -> the generated module in eval mode (:class:`~vitshrink.codegen.vit.PrunedViT` or
    :class:`~vitshrink.codegen.swin.PrunedSwin`): images [B, C, H, W] -> logits [B, classes].

    Args:
        share: the module's parameters *are* the IR's tensors where their layout allows (no copy).
        trace: forward also returns the token ids kept by each dynamic selection (ViT).
    """
    return family_of(ir).codegen.build_module(ir, share=share, trace=trace)


@torch.no_grad()
def reference_forward(dense: IR, spec: ResolvedSpec, images: Tensor, tensors: Optional[Mapping[str, Tensor]] = None,
                      trace: bool = False, residuals: Optional[list] = None):
    """Logits [B, num_classes] of the dense model ``dense`` under the masks of ``spec``: the masked dense
    reference of its family (:func:`vitshrink.reference.vit.reference_forward`,
    :func:`vitshrink.reference.swin.reference_forward`); with ``trace`` also the kept token ids per
    dynamic rule."""
    return family_of(dense).reference.reference_forward(dense, spec, images, tensors, trace=trace, residuals=residuals)
