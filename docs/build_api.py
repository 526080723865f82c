"""Build the API reference (HTML) from the docstrings with pdoc.

    python docs/build_api.py [OUT_DIR]      # default: docs/api (not tracked)

Public names of ``vitshrink`` are imported on first use; they are resolved here first so that pdoc
documents them where users import them from. Any pdoc warning (an unresolvable name, a broken
reference) fails the build: ``tests/test_api.py`` runs it.
"""
import sys
import warnings
from pathlib import Path


def build(out: Path) -> list[Path]:
    """Write the HTML API docs into ``out``; returns the files written. Raises on any pdoc warning."""
    import pkgutil

    import pdoc

    import vitshrink

    for name in vitshrink.__all__:
        getattr(vitshrink, name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pdoc.render.configure(docformat="google", footer_text=f"vitshrink {vitshrink.__version__}")
        import vitshrink.passes
        import vitshrink.runtime

        def submodules(pkg):
            return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + ".")
                          if not m.name.rsplit(".", 1)[-1].startswith("_"))

        # pdoc walks a package's submodules itself unless the package sets __all__ (vitshrink, passes)
        # (an editable install maps passes/ and runtime/ beside compiler/; a plain one nests them: dedupe)
        modules = list(dict.fromkeys(["vitshrink", *submodules(vitshrink), "vitshrink.passes",
                                      *submodules(vitshrink.passes), "vitshrink.runtime"]))
        pdoc.pdoc(*modules, output_directory=out)
    return sorted(out.rglob("*.html"))


if __name__ == "__main__":
    files = build(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "api"))
    print(f"wrote {len(files)} pages, e.g. {files[0]}")
