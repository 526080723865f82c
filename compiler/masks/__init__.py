"""The reference mask producer (``vitshrink masks``): magnitude (L1) criteria, so the main job runs on a
real checkpoint without another tool. Not a pruning method to publish; a baseline that writes spec v1.

- heads (per block): keep the ``round(R * H)`` heads with the largest L1 norm of their q, k, v
  weight rows plus their proj weight columns;
- MLP neurons (per block): keep the ``round(R * hidden)`` neurons with the largest L1 norm of their
  fc1 weight row (the S2ViTE neuron criterion, Chen et al. NeurIPS 2021);
- embedding channels: keep the ``round(R * D)`` channels with the largest L1 norm over all weights that
  write or read the channel -- globally for ViT (:mod:`.vit`), per stage for Swin (:mod:`.swin`).

Ties go to the lower index; at least one unit is always kept. :mod:`.tokens`: token schedules (ViT).
:mod:`.common`: the criteria both families share. The family registry picks the module
(:attr:`vitshrink.families.Family.masks`).
"""
