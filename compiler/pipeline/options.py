"""The options of a compile (:class:`CompileOptions`): one field per ``vitshrink compile`` flag."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..errors import VitshrinkError
from ..passes.layout import HEAD_LAYOUTS
from ..runtime.engines import parse_engines
from .calibration import DEFAULT_IMAGES

DEFAULT_TOLERANCE = 1e-4
PATH = {"path": True}  # a field naming a file or directory (a run file resolves it against its own folder)
#: fields that are not per-compile settings of a run file entry: the CLI's display, the run's --trust-pickle, and
#: source_format, which a run file spells ``from`` as the CLI does
NOT_ENTRY_FIELDS = ("progress", "trust_pickle", "source_format")


@dataclass
class CompileOptions:
    """Options of :func:`~vitshrink.pipeline.job.compile_model`; each field is the ``vitshrink compile``
    flag of the same name.

    Attributes:
        checkpoint: weights of the model (``.safetensors`` / ``.pth``); None: random weights (latency
            and exactness stay meaningful, accuracy does not; a warning says so).
        data: ImageFolder directory for top-1/top-5 of the original, dense and pruned models (and 4 real
            verification images); images that calibrated (below) are left out of it.
        calib: a folder of calibration images (in class folders or not; labels unused) for the INT8
            engines; default: ``calib_images`` of ``data`` (then held out from accuracy), else the images
            the spec's masks were chosen on (:mod:`vitshrink.pipeline.calibration`).
        calib_images: how many calibration images (a seeded choice when the folder has more).
        batch: batch sizes to time (an int or a sequence), e.g. ``(1, 8)``.
        threads: ONNX Runtime intra-op thread counts to time (an int or a sequence); at most 2 on 2 cores.
        bench_seconds: timing budget in seconds per (batch, threads) setting; rounds go on past it (up
            to 3x) while the figure is not yet stable (:func:`vitshrink.runtime.latency.stability`).
        limit: evaluate only the first ``limit`` images of ``data``.
        layout: ``"auto"`` (time the distinct head layouts on the first requested engine:
            :mod:`vitshrink.pipeline.layout_choice`), ``"pad"`` irregular heads to one width per block,
            ``"group"`` heads of equal width batched together, or ``"fused"`` heads padded to the widths
            fused attention kernels take, in at most two groups per block (:func:`vitshrink.passes.layout.bucket_heads`).
        token_layout: static tokens as ``"prefix"`` slices (one permutation) or ``"gather"``/scatter.
        tolerance: max abs diff on logits (fp32) for import fidelity, exactness and export.
        verify_images: seeded random images used for verification (plus 2 flat-block, plus real ones).
        verify_each: check every pass's output against the reference with the masks applied so far
            (report.json ``exactness.per_pass``); without it this runs only when the final check fails.
        trt: also build a TensorRT fp16 engine (skipped with the reason where TensorRT is missing).
        progress: stage lines and progress bars on stderr (the CLI's ``--quiet`` turns them off).
        source_format: without a spec, ``checkpoint`` is a pruned checkpoint of another tool; its format
            (``--from``), detected when None (:func:`vitshrink.importers.import_checkpoint`).
        dense_checkpoint: dense weights for formats that hold masks only (NNI).
        original_checkpoint: the weights of the original model -- the latency baseline and the accuracy that
            ``max_top1_drop`` compares with -- when ``checkpoint`` holds other ones (``vitshrink masks --data``'s
            re-fitted weights); default: the spec's ``meta.source`` (written by ``vitshrink masks``), else
            ``checkpoint`` (:func:`vitshrink.pipeline.original.original_weights`).
        trust_pickle: let a pickled checkpoint run its own code (off: classes are recorded, not run).
        import_options: format options (``--import-option KEY=VALUE``), e.g. ``{"exit": "11"}`` (WDPruning).
        engines: engines to verify and time (``--engines``): names of
            :data:`vitshrink.runtime.engines.ENGINES` (``ort``, ``openvino``, ``native``, ``torch``, the
            low-precision ``ort-int8``, ``openvino-int8``, ``native-int8``, ``openvino-bf16``,
            ``openvino-fp16``, the CUDA ones), ``"all"``, or a comma-separated string; engines that cannot
            run here are listed in the report as skipped with the reason. ``tensorrt`` and
            ``tensorrt-int8`` imply ``trt``.
        allow_model_mismatch: compile a spec whose ``meta.model`` names another model (masks index lists
            that fit any larger model; refused by default).
        img_size: (H, W) to create the timm model at (``--img-size``; the checkpoint's absolute position
            embeddings resampled as timm resamples them); None: the model's default.
        num_classes: the classes of the model's head (``--num-classes``; 0: a feature extractor) where the checkpoint
            does not say it; None: read from the checkpoint's classifier (:func:`vitshrink.frontends.timm.fit_classifier`).
        labels: a file of label names, one per output in output order (``.txt`` one per line, or ``.json``: a
            list or ``{index: name}``), mapping ``data``'s class folders to outputs by name; default: the model's
            own (HF ``id2label``, timm ``label_names``), else ImageNet wnids or sorted folder order
            (:func:`vitshrink.runtime.accuracy.map_folders`).
    Raises:
        VitshrinkError: an unknown engine (named); :meth:`check`: a value out of range (named).
    """

    checkpoint: Optional[str] = field(default=None, metadata=PATH)
    data: Optional[str] = field(default=None, metadata=PATH)
    calib: Optional[str] = field(default=None, metadata=PATH)
    calib_images: int = DEFAULT_IMAGES
    batch: Sequence[int] | int = (1,)
    threads: Sequence[int] | int = (2,)
    bench_seconds: float = 10.0
    limit: Optional[int] = None
    layout: str = "auto"
    token_layout: str = "prefix"
    tolerance: float = DEFAULT_TOLERANCE
    verify_images: int = 4
    verify_each: bool = False
    trt: bool = False
    progress: bool = True
    source_format: Optional[str] = None
    dense_checkpoint: Optional[str] = field(default=None, metadata=PATH)
    original_checkpoint: Optional[str] = field(default=None, metadata=PATH)
    trust_pickle: bool = False
    import_options: Optional[dict] = None
    engines: Sequence[str] | str = ("ort",)
    allow_model_mismatch: bool = False
    img_size: Optional[tuple[int, int]] = None
    num_classes: Optional[int] = None
    labels: Optional[str] = field(default=None, metadata=PATH)

    def __post_init__(self):
        try:
            self.engines = parse_engines(self.engines)
        except ValueError as e:
            raise VitshrinkError(f"--engines: {e}") from None
        if any(e.startswith("tensorrt") for e in self.engines):
            self.trt = True
        self.batch = (self.batch,) if isinstance(self.batch, int) else tuple(self.batch)
        self.threads = (self.threads,) if isinstance(self.threads, int) else tuple(self.threads)
        if self.checkpoint is not None:
            self.checkpoint = str(self.checkpoint)
        if self.original_checkpoint is not None:
            self.original_checkpoint = str(self.original_checkpoint)
        if self.data is not None:
            self.data = str(self.data)
        for name in ("calib", "labels"):
            if getattr(self, name) is not None:
                setattr(self, name, str(getattr(self, name)))
        if isinstance(self.img_size, int) and not isinstance(self.img_size, bool):  # a run file's img_size = 64
            self.img_size = (self.img_size, self.img_size)
        elif isinstance(self.img_size, list):
            self.img_size = tuple(self.img_size)

    def check(self) -> None:
        """Raise :class:`VitshrinkError` naming the flag of a value out of range."""
        if self.layout not in ("auto", *HEAD_LAYOUTS):
            raise VitshrinkError(f"--layout {self.layout!r}: expected auto, {', '.join(HEAD_LAYOUTS)}")
        if self.token_layout not in ("prefix", "gather"):
            raise VitshrinkError(f"--token-layout {self.token_layout!r}: expected 'prefix' or 'gather'")
        if any(b < 1 for b in self.batch) or any(t < 1 for t in self.threads):
            raise VitshrinkError("--batch and --threads take positive integers")
        if self.num_classes is not None and (isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)
                                             or self.num_classes < 0):
            raise VitshrinkError(f"--num-classes {self.num_classes!r}: give the number of classes (0: a feature extractor)")
        if self.calib_images < 1:
            raise VitshrinkError(f"--calib-images {self.calib_images}: give a positive number of images")
        s = self.img_size
        if s is not None and not (isinstance(s, tuple) and len(s) == 2 and
                                  all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in s)):
            raise VitshrinkError(f"--img-size {list(s) if isinstance(s, tuple) else s!r}: give H or [H, W], positive integers")


def with_overrides(options: Optional[CompileOptions], kwargs: dict) -> CompileOptions:
    """``options`` (or the defaults) with the keyword arguments of ``compile_model`` applied.

    Raises:
        VitshrinkError: an unknown keyword (named, with the options).
    """
    names = {f.name for f in dataclasses.fields(CompileOptions)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise VitshrinkError(f"compile_model got an unknown option '{unknown[0]}' (options: {', '.join(sorted(names))})")
    return dataclasses.replace(options or CompileOptions(), **kwargs)
