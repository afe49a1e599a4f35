"""Every phase of the study leaves its output in a directory with a spec of what made it; a rerun with the same
spec reuses it. Also the study's JSON files (written atomically) and its timer."""
import contextlib
import hashlib
import json
import os
import time
from typing import Callable, Sequence

import ml_collections

SPEC = "spec.json"


def reusable(directory: str, spec: dict, outputs: Sequence[str], spec_name: str = SPEC) -> bool:
    try:
        with open(os.path.join(directory, spec_name)) as f:
            same = json.load(f) == json.loads(json.dumps(spec))
    except (OSError, ValueError):
        return False
    return same and all(os.path.exists(os.path.join(directory, name)) for name in outputs)


def _digest(spec: dict) -> str:
    """Names outputs after their spec, so that a run trained on other parts never passes for current."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


def write_spec(directory: str, spec: dict, spec_name: str = SPEC) -> None:
    tmp = os.path.join(directory, spec_name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(spec, f, indent=2)
    os.replace(tmp, os.path.join(directory, spec_name))


def keyed_outputs(directory: str, spec: dict, extensions: dict[str, str]) -> tuple[dict[str, str], str, bool]:
    """Output paths named after the spec's digest, the name of that spec's own spec file (written last, so
    its presence means the outputs are complete) and whether they can be reused. One spec file per digest:
    parts pretrained under other settings (another seed) stay reusable beside these."""
    digest = _digest(spec)
    paths = {name: os.path.join(directory, f"{name}-{digest}.{ext}") for name, ext in extensions.items()}
    spec_name = f"spec-{digest}.json"
    return paths, spec_name, reusable(directory, spec, list(map(os.path.basename, paths.values())), spec_name)


def load_json(path: str):
    with open(path) as f:
        return json.load(f)


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def as_json(config: ml_collections.ConfigDict):
    """A config as the plain JSON value config.json holds (what two configs are compared by)."""
    return json.loads(config.to_json_best_effort())


class Timer:
    """Wall time per named phase (summed over repeats), logged as each phase ends."""

    def __init__(self, log: Callable[[str], None] = print):
        self.log = log
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
        self.log(f"{name}: {elapsed:.0f}s")
