"""Masked dense references: what a pruned model must compute, written as plainly as possible and
sharing no code with codegen, so that agreement between the two is evidence, not tautology.

- :mod:`.vit`: ViT/DeiT -- masks as zeros, removed blocks as identity, LayerNorm over kept embed
  channels, early exit, tokens as alive/key masks (Patch Slimming, EViT, VTC-LFC, predictors).
- :mod:`.swin`: Swin -- no windows at all: global attention per head over the stage grid with a bias
  built from token coordinates.
- :mod:`.common`: masked LayerNorm, linear, masked heads.

Run the reference of any family with :func:`vitshrink.reference_forward`.
"""
