"""Figures as 1-pixel PNGs, for the test runs that look at checkpoints, logs and tables
rather than pictures (conftest.quick_pictures): matplotlib's layout and drawing cost about
a second a figure on a CPU like CI's, and a run writes 5 to 8 of them.

In the tests' own processes conftest swaps the writers (swap); in the processes they
start, hooks/sitecustomize.py calls install() when QUICK_PICTURES is set, so that
machinery.metrics, once imported, has the placeholder as its save_figure, and so have the
modules that import it from there (gradcam, lr_range, sweep_report)."""
import importlib.abc
import importlib.machinery
import sys


def placeholder_for(metrics):
    """A save_figure that writes a 1-pixel PNG at the path, atomically as the real one."""
    def save_figure(fig, path, dpi=110):
        from PIL import Image
        with metrics.atomic_path(path) as tmp:
            Image.new("RGB", (1, 1), "white").save(tmp, format="PNG")
    return save_figure


def swap(old, new, setattr=setattr):
    """Every loaded module whose save_figure is `old` gets `new` (setattr: monkeypatch's,
    to have it undone)."""
    for module in list(sys.modules.values()):
        if getattr(module, "save_figure", None) is old:
            setattr(module, "save_figure", new)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "machinery.metrics":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            return None
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module.save_figure = placeholder_for(module)
        spec.loader.exec_module = exec_module
        return spec


def install():
    sys.meta_path.insert(0, _Finder())
