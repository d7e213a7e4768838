"""A sweep's search space: which training flags vary, over what, and each trial's flags.

    space = parse_space(["max_lr=0.02:0.4:log", "dropout=0.1,0.3,0.5"])  # or a YAML file
    check_space(space, fixed)      # every corner a valid run, before anything starts
    params = suggest(trial, space) # {name: value} from an Optuna trial
    flags = as_flags(params)       # ["--max-lr", "0.1", "--dropout", "0.3"]

A SPEC is `low:high` (uniform; whole numbers for an integer flag), `low:high:log`
(log-uniform) or `a,b,c` (choices; a single value fixes the flag). In YAML, a flag maps to
the same string, to a list of choices, or to {low, high, log}. Choices of a flag that takes
several numbers (--blocks) are written with spaces: `blocks=5 5 5 5,3 4 6 3`.
"""
import dataclasses
import difflib
import math

from .config import Config, UserError, flags, parse_args, resolve_config

# flags a trial's run decides for itself, or that make it something else than a run
NOT_SWEPT = {"out_dir"}
# flags that change what a trial is scored on: trials that differ there are not comparable
CHECKED = 10_000  # an integer range's values checked one by one, at most
SCORED_ON = {"dataset", "data_dir", "labels", "label_column", "val_split", "smoke"}


class TrialsFailing(Exception):
    """Trials fail one after another (settings that cannot train: data missing, a device
    the machine lacks): one line, exit 1, rather than new trials for ever."""


@dataclasses.dataclass
class Dimension:
    name: str  # the Config field (max_lr)
    kind: str  # "float", "int" or "choice"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple = ()  # Optuna keeps str/int/float/bool: a list flag's choice is "3 4 6 3"

    @property
    def flag(self):
        return "--" + self.name.replace("_", "-")

    @property
    def spec(self):
        """NAME=SPEC as it was read (a YAML file's entry too): what a study records."""
        values = (",".join(map(str, self.choices)) if self.kind == "choice" else
                  f"{self.low}:{self.high}" + (":log" if self.log else ""))
        return f"{self.name}={values}"

    def corners(self):
        """The values a check must try: every choice; every whole number of an integer
        range (`accum_steps=1:12` with batch 12 samples 5, which training refuses; only
        a range of more than CHECKED numbers is tried at its ends and CHECKED points
        between); both ends of a float range (flags check floats by bounds)."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            low, high = int(self.low), int(self.high)
            if high - low < CHECKED:
                return list(range(low, high + 1))
            return sorted({low, high, *(low + (high - low) * k // CHECKED for k in range(CHECKED))})
        return [self.low, self.high]


def _field(name, given):
    fields = {f.name: f for f in flags()}
    key = name.strip().lstrip("-").replace("-", "_")
    if key in SCORED_ON:
        raise UserError(f"--space {given}: {key} changes what the trials are scored on (their "
                        f"accuracies would not compare); give it after -- as a fixed flag")
    if key in fields and key not in NOT_SWEPT:
        return fields[key]
    close = difflib.get_close_matches(key, [k for k in fields if k not in NOT_SWEPT | SCORED_ON], n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    why = "is each trial's own" if key in NOT_SWEPT else "is not a training flag"
    raise UserError(f"--space {given}: {name.strip()} {why}{hint}; see python train.py --help")


def _value(field, text, given):
    """A choice's text as the flag's type (bools: true/false; lists: numbers with spaces)."""
    text = str(text).strip()
    try:
        if field.type is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ValueError
            return text.lower() in ("true", "1", "yes", "on")
        if field.type is list:
            numbers = [int(v) for v in text.split()]
            if len(numbers) != field.metadata["nargs"]:
                raise ValueError
            return " ".join(map(str, numbers))
        value = field.type(text)
        if field.type is float and not math.isfinite(value):  # (a trial at LR inf, or Optuna's
            raise ValueError  # range error after the study was made and its name taken)
        return value
    except ValueError:
        kind = {bool: "true or false", int: "a whole number", float: "a finite number",
                list: f"{field.metadata.get('nargs')} whole numbers with spaces"}.get(field.type, "text")
        raise UserError(f"--space {given}: {text!r} is not {kind}") from None


def parse_dimension(name, spec, given=None):
    """One flag's Dimension from its SPEC (a string, a list of choices or a {low, high,
    log} mapping)."""
    given = given or f"{name}={spec}"
    field = _field(name, given)
    if isinstance(spec, dict):
        odd = sorted(set(spec) - {"low", "high", "log"})
        if odd or "low" not in spec or "high" not in spec:
            raise UserError(f"--space {given}: a range is {{low, high}} or {{low, high, log}}"
                            + (f"; {odd[0]!r} is neither" if odd else ""))
        log = str(spec.get("log", "false")).lower()
        if log not in ("true", "false"):
            raise UserError(f"--space {given}: log is true or false (got {spec['log']!r})")
        spec = f"{spec['low']}:{spec['high']}" + (":log" if log == "true" else "")
    if isinstance(spec, (list, tuple)):
        spec = ",".join(map(str, spec))
    spec = str(spec).strip()
    if not spec:
        raise UserError(f"--space {given}: no values")
    if ":" in spec and field.type in (int, float):
        parts = spec.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
            raise UserError(f"--space {given}: a range is low:high or low:high:log")
        low, high = (_value(field, p, given) for p in parts[:2])
        log = len(parts) == 3
        if not low < high:
            raise UserError(f"--space {given}: the range is empty ({low} is not below {high})")
        if log and low <= 0:
            raise UserError(f"--space {given}: a log range must start above 0")
        return Dimension(field.name, "int" if field.type is int else "float", low, high, log)
    if ":" in spec:
        raise UserError(f"--space {given}: {field.name} takes choices (a,b,c), not a range")
    choices = tuple(dict.fromkeys(_value(field, c, given) for c in spec.split(",")))
    return Dimension(field.name, "choice", choices=choices)


def parse_space(items):
    """Dimensions from --space arguments: NAME=SPEC, or a YAML file's path (.yaml/.yml)."""
    dims = {}
    for item in items:
        if item.endswith((".yaml", ".yml")) and "=" not in item:
            pairs = _yaml_pairs(item)
        else:
            if "=" not in item:
                raise UserError(f"--space {item}: expected NAME=SPEC (e.g. max_lr=0.02:0.4:log) "
                                f"or a .yaml file")
            name, spec = item.split("=", 1)
            pairs = [(name, spec, item)]
        for name, spec, given in pairs:
            dim = parse_dimension(name, spec, given)
            if dim.name in dims:
                raise UserError(f"--space {given}: {dim.name} is given twice")
            dims[dim.name] = dim
    return list(dims.values())


def _strict_loader():
    """YAML's BaseLoader (every scalar as written), refusing a key given twice: PyYAML
    keeps the last one silently, and a sweep would then search half of what was meant."""
    import yaml

    class Strict(yaml.BaseLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"{key!r} is given twice", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)
    return Strict


def _yaml_pairs(path):
    import yaml
    _StrictLoader = _strict_loader()
    try:
        with open(path, encoding="utf-8") as f:
            # every scalar as written: YAML 1.1 would read `epochs: 10:30` as the number 630
            loaded = yaml.load(f, Loader=_StrictLoader)
    except OSError as e:
        raise UserError(f"--space {path}: {e.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"--space {path}: not YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(loaded, dict) or not loaded:
        raise UserError(f"--space {path}: expected a mapping of flags to specs, e.g. "
                        f"'max_lr: 0.02:0.4:log'")
    return [(str(k), v, f"{path}: {k}") for k, v in loaded.items()]


def check_space(dims, fixed):
    """Every corner of the space with the fixed flags is a valid config (one line if not):
    a trial must not be the first to learn that --dropout 1 is refused."""
    for dim in dims:
        if dim.name in fixed:
            raise UserError(f"{dim.flag} is both in --space and in the fixed training flags")
        bad, good, why = [], [], None
        for v in dim.corners():
            try:  # as train.py reads its flags (choices: --precision fp64), then the config
                parse_args(as_flags({dim.name: v}))
                resolve_config({**fixed, dim.name: _typed(dim.name, v)})
                good.append(v)
            except UserError as e:
                bad, why = bad + [v], why or e
                if dim.kind != "int":
                    break
        if bad and dim.kind == "int":  # which of its numbers fail, and the choices that train
            shown = ", ".join(map(str, bad[:6])) + (", ..." if len(bad) > 6 else "")
            hint = (f"; give the ones that do as choices ({dim.name}={','.join(map(str, good[:12]))})"
                    if good and len(good) <= 12 else "; narrow the range")
            raise UserError(f"--space {dim.name}: {shown} ({len(bad)} of the range's "
                            f"{len(bad) + len(good)} values) cannot train: {why}{hint}")
        if bad:
            raise UserError(f"--space {dim.name}: {bad[0]} cannot train: {why}")


def _typed(name, value):
    """A sampled value as the Config field's type ("3 4 6 3" -> [3, 4, 6, 3])."""
    field = {f.name: f for f in dataclasses.fields(Config)}[name]
    if field.type is list:
        return [int(v) for v in str(value).split()]
    return field.type(value)


def suggest(trial, dims):
    """{name: value} for an Optuna trial (ask-and-tell)."""
    out = {}
    for d in dims:
        if d.kind == "float":
            out[d.name] = trial.suggest_float(d.name, d.low, d.high, log=d.log)
        elif d.kind == "int":
            out[d.name] = trial.suggest_int(d.name, d.low, d.high, log=d.log)
        else:
            out[d.name] = trial.suggest_categorical(d.name, list(d.choices))
    return out


def as_flags(params):
    """Training flags for {name: value}: --max-lr 0.1, --no-stem-pool, --blocks 3 4 6 3."""
    out = []
    for name, value in params.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif isinstance(_typed(name, value), list):
            out += [flag, *str(value).split()]
        else:
            out += [flag, repr(value) if isinstance(value, float) else str(value)]
    return out


def grid(dims, seeds, base_seed):
    """The grid sampler's space: every dimension's choices, and `seed` when seeds > 1."""
    ranges = [d for d in dims if d.kind != "choice"]
    if ranges:
        raise UserError(f"--sampler grid needs choices: --space {ranges[0].name}="
                        f"{ranges[0].low}:{ranges[0].high} is a range (write a,b,c)")
    space = {d.name: list(d.choices) for d in dims}
    if seeds > 1:
        space["seed"] = [base_seed + i for i in range(seeds)]
    return space
