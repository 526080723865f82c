"""Frontends: a framework's model -> the IR, one module per model family (timm today).

- :mod:`.timm`: create a timm model by name, read and load checkpoints, the eval transform.
- :mod:`.timm_vit`, :mod:`.timm_swin`: the translations (each refuses, by name, every option it cannot
  represent exactly); :mod:`.timm_common`: what they share.
"""
