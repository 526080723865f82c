"""What every importer works with: the context of one import (:class:`ImportContext`), what it
produces (:class:`ImportResult`) and how a format registers (:class:`Format`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from torch import Tensor, nn

from ..errors import CheckpointError
from ..frontends.timm import configure as configure_model, fit_classifier
from ..families import VIT, Family
from ..spec.format import Spec


@dataclass
class ImportResult:
    """What an importer produced.

    Attributes:
        format: registry name; ``reason``: why detection chose it.
        state_dict: weights of the *original* (dense) timm architecture, pruned units as zeros, constant
            outputs of removed units folded into the next bias: load into the dense model and compile.
        spec: canonical masks (spec v1, original coordinates -- or, without index history, kept units
            placed first, said in ``notes``).
        reference_state_dict: what the source computes, as weights of the dense timm model (None:
            the source cannot be run without its code; then the masked dense reference is the anchor).
        reference_scales: softmax scale per block the source really uses (block -> scale), for the reference.
        notes: ``loader``, per-block ``widths``, ``removed``, ``not_removed``, ``unstructured``, ``index_history``.
        layer_norm_eps: the source's LayerNorm eps where it differs from timm's (Hugging Face: 1e-12).
        reference_exit: the source ends early (WDPruning): (blocks kept, norm prefix, head prefix) -- the
            reference is timm's model cut by hand after that many blocks with that norm and classifier.
        model_kwargs: timm ``create_model`` arguments the source's architecture needs beyond the model name
            (an HF vision tower's ``num_classes=0`` or projection width, its ``img_size``).
        label_names: the source's name of each output class (an HF ``config.id2label`` other than transformers'
            ``LABEL_i`` placeholders) and where they were read, set on the model by :meth:`configure`.
        data_config: how the source preprocesses images, as timm data-config keys (``mean``, ``std``,
            ``interpolation``, ``crop_pct``, ``crop_mode``: an HF image processor's), set on the model's
            ``pretrained_cfg`` by :meth:`configure` so timm's eval transform does the same.
    """

    format: str
    reason: str
    state_dict: dict[str, Tensor]
    spec: Spec
    reference_state_dict: Optional[dict[str, Tensor]] = None
    reference_scales: dict[int, float] = field(default_factory=dict)
    reference_note: str = ""
    notes: dict = field(default_factory=dict)
    layer_norm_eps: Optional[float] = None
    reference_exit: Optional[tuple[int, str, str]] = None
    model_kwargs: dict = field(default_factory=dict)
    label_names: Optional[tuple[tuple[str, ...], str]] = None
    data_config: Optional[dict] = None

    def configure(self, model: nn.Module) -> nn.Module:
        """Set on a timm model what the source computes with but the weights do not carry (LayerNorm eps, the
        label names, the preprocessing: :func:`vitshrink.frontends.timm.configure`)."""
        return configure_model(model, self.layer_norm_eps, self.label_names, self.data_config)


@dataclass
class ImportContext:
    """What a probe and a converter may use: the dense model (timm, original architecture), its name and
    family, the file and the user's options. The dense weights (``--dense-checkpoint`` or the model's
    own) are :func:`~vitshrink.importers.load.dense_state`."""

    model_name: str
    model: nn.Module
    path: Path
    family: Family
    dense_checkpoint: Optional[Path] = None
    trust: bool = False
    loader: str = ""
    options: dict = field(default_factory=dict)

    def option(self, key: str, default=None):
        """An importer option (``--import-option KEY=VALUE``), as given (a string) or ``default``."""
        return self.options.get(key, default)

    def prefixes(self) -> list[str]:
        """Per block, its state-dict prefix -- which is also its spec name: ``blocks.{i}.`` (ViT) or
        ``layers.{s}.blocks.{j}.`` (Swin), from the family's frontend."""
        return [p for p, _ in self.family.frontend.timm_blocks(self.model)]

    def dims(self) -> list[tuple[int, int, int]]:
        """Per block of the dense model (in :meth:`prefixes` order): (num_heads, head_dim, MLP hidden)."""
        return [(b.attn.num_heads, b.attn.qkv.out_features // (3 * b.attn.num_heads), b.mlp.fc1.out_features)
                for _, b in self.family.frontend.timm_blocks(self.model)]

    def activations(self) -> list:
        """Per block (in :meth:`prefixes` order): the MLP activation module of the dense model (GELU,
        QuickGELU, GELUTanh ...), what a dead neuron's bias goes through."""
        return [b.mlp.act for _, b in self.family.frontend.timm_blocks(self.model)]

    def check_shapes(self, sd: dict[str, Tensor], what: str) -> None:
        """Every key of the dense model present in ``sd`` at its shape.

        Raises:
            CheckpointError: naming the missing key, or the key and both shapes.
        """
        fit_classifier(self.model, sd)  # a head fine-tuned to its own classes: the model's is made that size
        for k, v in self.model.state_dict().items():
            if k not in sd:
                raise CheckpointError(f"{what} '{self.path}' does not fit {self.model_name}: key '{k}' missing")
            if tuple(sd[k].shape) != tuple(v.shape):
                raise CheckpointError(f"{what} '{self.path}' does not fit {self.model_name}: '{k}' has shape "
                                      f"{list(sd[k].shape)}, the model needs {list(v.shape)}")


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    probe: Callable[[Any, ImportContext], Optional[str]]
    convert: Callable[[Any, ImportContext], ImportResult]
    fallback: bool = False  # chosen only when no specific format matches (``zeroed``)
    families: tuple[Family, ...] = (VIT,)  # the model families whose checkpoints it reads
    reads: tuple[str, ...] = ()  # top-level entries of a wrapped checkpoint it reads besides the weights
