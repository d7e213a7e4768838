"""The house's rules: at the top of the repo only the commands and the public import; the
machinery in one package, machinery/, whose modules import only from the floors below
them; the README's layout names every file."""
import ast
import os
import re

import pytest

from conftest import ROOT

PACKAGE = "machinery"
# What a user runs or imports, lowest first: each may import the package and the files of
# the rows before its own.
COMMANDS = [
    ["model"],
    ["gradcam_utils", "export", "hubconf", "predict", "app", "sweep"],
    ["train"],
]
# The package's floors, lowest first: a module may import any module of a lower floor,
# none of its own or higher, and nothing at the top.
FLOORS = [
    ["cifar", "images", "failures", "progress", "workers", "own_files", "stops"],
    ["checkpoint_files", "folder_cache", "label_tables", "space_app"],
    ["folder_listing"],
    ["imagefolder"],
    ["data", "metrics"],
    ["config", "gradcam", "lr_range"],
    ["logs", "run_folder", "runlock", "tensorboard_events", "sweep_space"],
    ["checkpointing", "runtime", "card", "sweep_trials"],
    ["evaluation", "predicting", "sweep_report"],
]


def _python_files(folder):
    return sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and f != "__init__.py")


def _imports(path):
    """(package modules, bare top-level names) that the file imports, at the top or inside
    a function: `from . import x`, `from .x import y`, `from machinery.x import y` and
    `from machinery import x` name package module x; `import x` / `from x import y` name x."""
    package, bare = set(), set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                (package.add(parts[1]) if parts[0] == PACKAGE and len(parts) > 1
                 else bare.add(parts[0]))
        elif isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".")
            if node.level == 0 and parts[0] != PACKAGE:
                bare.add(parts[0])
            elif (node.level and not node.module) or parts == [PACKAGE]:
                package |= {a.name for a in node.names}
            else:
                package.add(parts[1] if node.level == 0 else parts[0])
    return package, bare


def test_the_top_holds_only_the_commands_and_the_public_import():
    top = set(_python_files(ROOT))
    expected = {m for row in COMMANDS for m in row}
    assert top == expected, (f"{sorted(top - expected)} at the top: the machinery goes into "
                             f"{PACKAGE}/ (a command gets a row in COMMANDS)")


def test_every_package_import_goes_down_the_floors():
    floor = {m: i for i, ms in enumerate(FLOORS) for m in ms}
    modules = _python_files(os.path.join(ROOT, PACKAGE))
    assert set(modules) == set(floor), "a module was added or removed: give it a floor here"
    commands = {m for row in COMMANDS for m in row}
    wrong = []
    for m in modules:
        package, bare = _imports(os.path.join(ROOT, PACKAGE, m + ".py"))
        wrong += [f"{m} (floor {floor[m]}) imports {d} (floor {floor[d]})"
                  for d in sorted(package) if floor[d] >= floor[m]]
        # by a bare name a user's own file of that name would shadow; or climbing to the top
        wrong += [f"{m} imports {d} by its bare name" for d in sorted(bare & (set(floor) | commands))]
    assert not wrong, wrong


def test_the_commands_import_the_package_and_each_other_downwards():
    row = {m: i for i, ms in enumerate(COMMANDS) for m in ms}
    modules = set(_python_files(os.path.join(ROOT, PACKAGE)))
    wrong = []
    for m in row:
        package, bare = _imports(os.path.join(ROOT, m + ".py"))
        wrong += [f"{m} imports {d} (row {row[d]})" for d in sorted(bare & set(row))
                  if row[d] >= row[m]]
        wrong += [f"{m} imports {d} by its bare name" for d in sorted(bare & modules)]
        wrong += [f"{m} imports {PACKAGE}.{d}, which does not exist" for d in sorted(package - modules)]
    assert not wrong, wrong


def test_the_layout_names_every_module():
    """The README's layout names every command; CONTRIBUTING's floors every module."""
    def section(name, title):
        text = open(os.path.join(ROOT, name)).read()
        return set(re.findall(r"\b(\w+)\.py\b", text.split(title, 1)[1].split("\n## ", 1)[0]))
    commands = set(_python_files(ROOT))
    assert commands <= section("README.md", "## Project layout"), "a command the README lacks"
    modules = set(_python_files(os.path.join(ROOT, PACKAGE)))
    missing = modules - section("CONTRIBUTING.md", "## The package, floor by floor")
    assert not missing, sorted(missing)


def test_what_moved_out_of_model_is_still_imported_from_it():
    """Code written against model.X before the checkpoint files, image decoding and
    predictions moved into the package."""
    import model
    from machinery import checkpoint_files, images, predicting
    for name in ("CheckpointError", "load_checkpoint", "save_checkpoint", "atomic_path",
                 "load_weights", "upgrade_state_dict", "model_args_from_state_dict",
                 "check_model_args", "init_from_checkpoint", "fill_metadata", "dataset_of",
                 "network_name", "find_latest_checkpoint",
                 "periodic_checkpoints", "position_of"):
        assert getattr(model, name) is getattr(checkpoint_files, name), name
    for name in ("load_image", "normalize", "standardize"):
        assert getattr(model, name) is getattr(images, name), name
    for name in ("Classifier", "Prediction", "predict", "predictions"):
        assert getattr(model, name) is getattr(predicting, name), name


# The network, as its readers look for it: in model.py and nowhere else
NETWORK = {"BasicBlock", "ResNet", "ResNet34", "get_resnet34", "build_model",
           "model_from_checkpoint", "load_classifier", "count_parameters"}


def _defined(path):
    """Names of the classes and functions a file defines at its top level."""
    tree = ast.parse(open(path).read())
    return {n.name for n in tree.body
            if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))}


def test_model_py_defines_the_network_and_no_other_file_does():
    assert NETWORK <= _defined(os.path.join(ROOT, "model.py")), NETWORK - _defined(
        os.path.join(ROOT, "model.py"))
    others = [os.path.join(ROOT, m + ".py") for row in COMMANDS for m in row if m != "model"]
    others += [os.path.join(ROOT, PACKAGE, m + ".py") for m in _python_files(os.path.join(ROOT, PACKAGE))]
    again = {os.path.relpath(p, ROOT): sorted(_defined(p) & {"BasicBlock", "ResNet", "ResNet34"})
             for p in others}
    assert not any(again.values()), {p: n for p, n in again.items() if n}


def test_nothing_in_the_package_imports_model():
    """model.py is above the machinery: a module of the package that imported it would
    climb a floor, and a user's own model.py would take its place."""
    importing = [m for m in _python_files(os.path.join(ROOT, PACKAGE))
                 if "model" in _imports(os.path.join(ROOT, PACKAGE, m + ".py"))[1]]
    assert not importing, importing


def _names_in_pickle(path):
    """The module names a checkpoint's pickle refers to (GLOBAL and STACK_GLOBAL opcodes)."""
    import pickletools
    import zipfile
    with zipfile.ZipFile(path) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    names, strings = set(), []
    for op, arg, _ in pickletools.genops(pkl):
        if op.name == "GLOBAL":
            names.add(arg.split(" ")[0])
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            names.add(strings[-2])
    return names


def test_a_checkpoint_names_no_module_of_the_repo(smoke_run):
    """Nothing a checkpoint pickles names where the code lives, so files written before
    the machinery moved into its package (or by the reference) load after it."""
    out, _ = smoke_run
    ours = {m for row in COMMANDS for m in row} | {m for ms in FLOORS for m in ms} | {PACKAGE}
    for name in ("best_model.pt", "last.pt"):
        modules = _names_in_pickle(out / "checkpoints" / name)
        assert modules and {m.split(".")[0] for m in modules} <= {"torch", "collections"}, modules
        assert not {m.split(".")[0] for m in modules} & ours


def test_a_programs_own_data_config_and_images_do_not_shadow_the_repo(smoke_run, tmp_path):
    """A user's project with its own data.py, config.py and images.py, imported first, then
    this repo's model.py: the checkpoint loads and predicts, and the user's modules stay."""
    import subprocess
    import sys
    out, _ = smoke_run
    for name in ("data", "config", "images"):
        (tmp_path / f"{name}.py").write_text(f"WHO = 'user {name}'\n")
    code = (f"import sys; sys.path.append({ROOT!r})\n"
            "import data, config, images\n"
            "import model\n"
            f"clf = model.load_classifier({str(out / 'checkpoints' / 'best_model.pt')!r})\n"
            "import numpy as np\n"
            "top = model.predict(clf, [np.zeros((32, 32, 3), np.uint8)], k=1)[0][0]\n"
            "assert top[0] in clf.class_names, top\n"
            "assert (data.WHO, config.WHO, images.WHO) == ('user data', 'user config', 'user images')\n"
            "assert sys.modules['data'] is data\n"
            "print('ok', len(clf.class_names))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr[-2000:]


COMMAND_LINES = ["train", "predict", "export", "app", "sweep", "gradcam_utils"]


@pytest.mark.slow
@pytest.mark.fresh_python  # (a handed-over process has torch imported already: tests/zygote.py)
@pytest.mark.parametrize("command", COMMAND_LINES)
def test_a_ctrl_c_while_a_command_still_loads_torch_is_one_line(command):
    """Ctrl-C in the first second (`import torch`, before main() and its own handlers):
    one line and Python's SIGINT exit, not importlib's thirty-line traceback."""
    import signal
    import subprocess
    import sys
    import time
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, f"{command}.py"), "--help"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert "Traceback" not in err and len(err.splitlines()) <= 1, err
