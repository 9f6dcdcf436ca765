"""The classifier's measured confusion, per weights version, and what it says about
where a called cell may truly belong.

``data/confusion/<weights_version>.json`` holds counts on validation data:
``called[c][t]`` cells called ``c`` whose true class is ``t`` (true ``blast`` is a
blast of unknown lineage, Matek ``BLA``). From a row the rules take a 95% Wilson
interval of P(true class in a set | called c): the upper end bounds how many
cells called ``c`` may belong to a rule's numerator, the lower end how many
cells called into the numerator it may stand on. The rates were measured on the
validation data's class mix; a case whose mix differs (an APL marrow) shifts them,
which is one more reason these are screening bounds, not a diagnosis.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from marrowdx.domain.counting import wilson_interval


@dataclass(frozen=True)
class Confusion:
    weights_version: str
    taxonomy_version: str
    data: str
    called: Mapping[str, Mapping[str, int]]

    def rate_bounds(self, called: str, true_classes: Collection[str]) -> tuple[float, float] | None:
        """95% interval of P(true class in ``true_classes`` | called ``called``); None when
        the validation data never saw the class called (nothing is known about it)."""
        row = self.called.get(called)
        total = sum(row.values()) if row else 0
        if not total:
            return None
        return wilson_interval(sum(v for t, v in row.items() if t in true_classes), total)


def parse_confusion(raw: Mapping) -> Confusion:
    for key in ("weights_version", "taxonomy_version", "data", "called"):
        if key not in raw:
            raise ValueError(f"confusion file lacks {key!r}")
    called: dict[str, dict[str, int]] = {}
    for c, row in raw["called"].items():
        if not isinstance(row, Mapping):
            raise ValueError(f"confusion row {c!r} is not an object of counts")
        for t, v in row.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"confusion count called {c!r} true {t!r} must be a whole number >= 0, not {v!r}")
        called[c] = dict(row)
    return Confusion(str(raw["weights_version"]), str(raw["taxonomy_version"]), str(raw["data"]), called)


def load_confusion(weights_version: str, directory: Path | None = None) -> Confusion | None:
    """The confusion measured for ``weights_version``, or None when there is no file for it
    (the rules then fall back to their conservative bounds and say so)."""
    if not weights_version or "/" in weights_version or weights_version.startswith("."):
        return None
    if directory is None:
        entry = resources.files("marrowdx.data").joinpath("confusion", f"{weights_version}.json")
        if not entry.is_file():
            return None
        text = entry.read_text()
    else:
        path = Path(directory) / f"{weights_version}.json"
        if not path.is_file():
            return None
        text = path.read_text()
    confusion = parse_confusion(json.loads(text))
    if confusion.weights_version != weights_version:
        raise ValueError(f"confusion file for {weights_version} says weights {confusion.weights_version}")
    return confusion


@cache
def default_confusion(weights_version: str) -> Confusion | None:
    return load_confusion(weights_version)
