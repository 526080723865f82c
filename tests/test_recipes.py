"""The README's recipes as a user types them (issue 18 item 6): a script that imports timm itself works
after ``vitshrink.ensure_timm_importable()`` (and fails without it where torchvision does not match
torch); the Torch-Pruning recipe prunes a DeiT into a file that reloads with a plain ``torch.load`` (the
README runs the recipe and compiles its file in one command, gated)."""
from __future__ import annotations

import subprocess
import sys

from conftest import REPO, need



def test_the_public_workaround_lets_a_script_import_timm(tmp_path):
    code = "import vitshrink\nvitshrink.ensure_timm_importable()\nimport timm, torchvision\nprint(timm.__version__)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr[-1000:]
    assert "ensure_timm_importable" in __import__("vitshrink").__all__


def test_torch_pruning_recipe_runs_as_written(tmp_path):
    need("torch_pruning")
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "torch_pruning_deit.py"), "--model", "deit_tiny_patch16_224",
                           "--out", "tp.pth"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "tp.pth").is_file()  # a bare file name, where the example's os.makedirs('') failed
    # the file reloads in another script with a plain torch.load (issue 26 item 5): no patched forward in it
    code = ("import vitshrink\nvitshrink.ensure_timm_importable()\nimport torch, timm\n"
            "m = torch.load('tp.pth', weights_only=False)\nprint(tuple(m(torch.randn(1, 3, 224, 224)).shape))\n")
    reload = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert reload.returncode == 0 and "(1, 1000)" in reload.stdout, reload.stderr[-2000:]
    # `vitshrink compile` of the file is the README's runnable block, gated by `vitshrink check`; the import of
    # Torch-Pruning files is test_importers' (exact against the tool's own module) and test_import_cli's
