"""``vitshrink masks``: the reference mask producer -- L1 width criteria and token schedules, written as spec v1."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import click

from ..errors import VitshrinkError
from .common import EXIT_CODES, fail


@click.command("masks", epilog="""\b
Examples:
  vitshrink masks deit_small_patch16_224 --checkpoint w.safetensors --heads 0.5 --mlp 0.5 --out spec.json
  vitshrink masks deit_tiny_patch16_224 --tokens evit:0.7@4,7,10 --out evit.json
""" + EXIT_CODES)
@click.argument("model")
@click.option("--checkpoint", default=None, help="Weights to score (random weights when omitted).")
@click.option("--heads", type=float, default=None, help="Keep ratio of heads per block (largest L1).")
@click.option("--mlp", type=float, default=None, help="Keep ratio of MLP hidden neurons per block (largest fc1-row L1).")
@click.option("--embed", type=float, default=None, help="Keep ratio of embedding channels (largest L1).")
@click.option("--tokens", "tokens", default=None,
              help="Token schedule KIND:RATIO@BLOCKS -- uniform (static), slim (static, Patch Slimming, needs --calib), "
                   "evit or lfe (dynamic); e.g. evit:0.7@4,7,10, slim:0.8@2-11.")
@click.option("--token-mode", type=click.Choice(["drop", "query"]), default=None,
              help="Static tokens: drop (leave the sequence) or query (Patch Slimming). Default: drop for uniform, query for slim.")
@click.option("--fuse", is_flag=True, help="Dynamic rules: merge pruned tokens into one (EViT).")
@click.option("--calib", default=None, help="Folder of calibration images (slim; class folders or not).")
@click.option("--calib-n", default=100, show_default=True, help="Calibration images (a seeded choice from the folder).")
@click.option("--out", "out", required=True, help="Spec file to write (.json or .safetensors); its folder is created.")
def masks_cmd(model, checkpoint, heads, mlp, embed, tokens, token_mode, fuse, calib, calib_n, out):
    """Write a reference mask spec for MODEL: L1 width criteria and/or a token schedule."""
    from .. import families  # lazy: the compile stack loads only for commands that use it
    from ..frontends.timm import eval_transform  # lazy: as above
    from ..masks.tokens import token_spec  # lazy: as above
    from ..pipeline.calibration import choose, find_images, load_images, record  # lazy: as above
    from ..spec.format import Spec, save_spec  # lazy: as above

    try:
        if heads is None and mlp is None and embed is None and tokens is None:
            raise VitshrinkError("give at least one of --heads, --mlp, --embed, --tokens")
        out_path = Path(out)
        if out_path.suffix not in (".json", ".safetensors"):
            raise VitshrinkError(f"--out '{out}': use a .json or .safetensors file name")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            timm_model, ir, _ = families.import_model(model, checkpoint)
        family = families.family_of(ir)
        spec = family.masks.l1_spec(ir, heads=heads, mlp=mlp, embed=embed) if (heads or mlp or embed) else Spec(meta={"producer": "vitshrink masks"})
        if tokens and not family.token_pruning:
            raise VitshrinkError(f"--tokens: token schedules do not apply to {model} ({family.title}: its windows need every token)")
        if tokens:
            paths = choose(find_images(calib), calib_n) if calib else None
            images = load_images(paths, eval_transform(timm_model)) if paths else None
            token_masks, settings = token_spec(ir, tokens, mode=token_mode, fuse=fuse, calib=images)
            spec.masks.update(token_masks)
            spec.settings.update(settings)
            spec.meta["tokens"] = {"schedule": tokens}
            if paths:  # compile --data leaves these images out of its accuracy
                spec.meta["calibration"] = record(paths, calib, "vitshrink masks --calib")
        spec.meta.setdefault("model", model)  # compile refuses it for another model (--allow-model-mismatch)
        out_path.parent.mkdir(parents=True, exist_ok=True)  # as compile and run create their folders
        tmp = out_path.with_name(f".{out_path.name}.tmp")
        save_spec(spec, tmp, resolved_shapes=family.spec.mask_shapes(ir), form=out_path.suffix.lstrip("."))
        os.replace(tmp, out_path)
    except VitshrinkError as e:
        fail(e)
    # width criteria and Patch Slimming score the weights; uniform/evit/lfe schedules read none
    if heads or mlp or embed or (tokens and tokens.split(":")[0].strip() == "slim"):
        for w in caught:
            if "RANDOM" in str(w.message):
                click.echo(f"warning: {w.message}", err=True)
    click.echo(f"wrote {out}: {len(spec.masks)} masks, settings {sorted(spec.settings)} for {model}")
