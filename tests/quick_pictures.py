"""Figures as 1-pixel PNGs, for the test runs that look at checkpoints, logs and tables
rather than pictures (conftest.quick_pictures): matplotlib's layout and drawing cost about
a second a figure on a CPU like CI's, and a run writes 5 to 8 of them.

In the tests' own processes conftest replaces the writers directly; in the processes they
start, hooks/sitecustomize.py calls install() when QUICK_PICTURES is set, so that
machinery.metrics, once imported, has the placeholder as its save_figure (and so have the
modules that import it from there: gradcam, lr_range, sweep_report)."""
import importlib.abc
import importlib.machinery
import struct
import sys
import zlib


def _png():
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0\xff\xff\xff")) + chunk(b"IEND", b""))


PNG = _png()


def placeholder_for(metrics):
    """A save_figure that writes PNG at the path, atomically as the real one does."""
    def save_figure(fig, path, dpi=110):
        with metrics.atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(PNG)
    return save_figure


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
