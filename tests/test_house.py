"""The house's rules: every module imports only from the floors below it (the drawing in
the README's *Project layout*), and the README's layout names every module."""
import ast
import os
import re

from conftest import ROOT

# Lowest first; a module may import any module of a lower floor, none of its own or higher.
FLOORS = [
    ["cifar", "images", "failures", "progress"],
    ["checkpoint_files", "imagefolder"],
    ["model", "data", "metrics"],
    ["config"],
    ["checkpointing", "logs", "runlock", "tensorboard_events"],
    ["runtime"],
    ["gradcam_utils"],
    ["evaluation"],
    ["train", "export", "hubconf"],
]


def _modules():
    return sorted(f[:-3] for f in os.listdir(ROOT) if f.endswith(".py"))


def _project_imports(module, names):
    """Every project module `module` imports, at the top or inside a function."""
    tree = ast.parse(open(os.path.join(ROOT, module + ".py")).read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(names)


def test_every_import_goes_down_the_floors():
    floor = {m: i for i, ms in enumerate(FLOORS) for m in ms}
    modules = _modules()
    assert set(modules) == set(floor), "a module was added or removed: give it a floor here"
    climbs = [f"{m} (floor {floor[m]}) imports {d} (floor {floor[d]})"
              for m in modules for d in sorted(_project_imports(m, modules))
              if floor[d] >= floor[m]]
    assert not climbs, climbs


def test_the_readme_layout_names_every_module():
    readme = open(os.path.join(ROOT, "README.md")).read()
    layout = readme.split("## Project layout", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"\b(\w+)\.py\b", layout))
    assert set(_modules()) <= named, sorted(set(_modules()) - named)


def test_what_moved_out_of_model_is_still_imported_from_it():
    """Code written against model.X before the checkpoint files and image decoding moved."""
    import checkpoint_files
    import images
    import model
    for name in ("CheckpointError", "load_checkpoint", "save_checkpoint", "atomic_path",
                 "load_weights", "upgrade_state_dict", "model_args_from_state_dict",
                 "check_model_args", "init_from_checkpoint", "fill_metadata", "dataset_of",
                 "network_name", "find_latest_checkpoint",
                 "periodic_checkpoints", "position_of"):
        assert getattr(model, name) is getattr(checkpoint_files, name), name
    for name in ("load_image", "normalize", "standardize"):
        assert getattr(model, name) is getattr(images, name), name
