"""Frontends: a framework's model -> the IR, one module per model family (timm today).

- :mod:`.timm`: create a timm model by name, read and load checkpoints, the eval transform.
- :mod:`.timm_vit` (ViT/DeiT, CLIP, DINOv2, SigLIP, hybrids), :mod:`.timm_eva` (EVA-02, DINOv3, RoPE ViTs),
  :mod:`.timm_relpos` (BEiT, ``vit_relpos``), :mod:`.timm_cait` (CaiT) -> the ViT IR; :mod:`.timm_swin`,
  :mod:`.timm_swinv2` (Swin V2, V2 Cr) -> the Swin IR: the translations (each refuses, by name, every option
  it cannot represent exactly); :mod:`.timm_common` and :mod:`.timm_parts` (MLP activations, the attention
  pool, LayerScale): what they share.
"""
