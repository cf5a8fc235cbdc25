"""Where an image-to-image (revisited protocol) benchmark's images come from, chosen in configs by `class_path`:
`SyntheticInstances` (built in, rendered once into the cache) or `Revisited` (ROxford5k / RParis6k files).

```yaml
instances:
  dataset:
    class_path: Revisited
    init_args: {name: roxford5k, root: /data/roxford5k}
```
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict
from typing import Any

from mmrerank.core.io import require_path
from mmrerank.datasets.revisited import RevisitedDataset, load_revisited
from mmrerank.datasets.synthetic.instances import InstanceConfig, load_instances


class InstanceSource(ABC):
    """An image-to-image dataset under the revisited protocol (queries, database, easy / hard / junk judgements)."""

    name: str

    @abstractmethod
    def load(self) -> RevisitedDataset:
        """The queries, database images and ground truth."""

    def describe(self) -> dict[str, Any]:
        """What it is, for a report's config: the class and its settings."""
        return {"class": type(self).__name__, **self.settings()}

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The arguments it was built with."""

    def check(self, key: str = "instances.dataset") -> None:
        """Refuse missing local files before anything is rendered or trained; nothing to check by default."""
        return None

    def cache_key(self) -> dict | None:
        """What the images depend on, when they are a function of the settings (descriptors may then be cached);
        None: not cacheable (files on disk)."""
        return None


class SyntheticInstances(InstanceSource):
    """The built-in synthetic image-to-image benchmark.

    Args:
        seed, queries, easy, hard, junk, distractors, image_size, root: as for `InstanceConfig`.

    Examples:
        >>> SyntheticInstances(queries=3, distractors=10).name
        'synthetic'
    """

    name = "synthetic"

    def __init__(self, seed: int = 0, queries: int = 70, easy: int = 4, hard: int = 4, junk: int = 2,
                 distractors: int = 1000, image_size: int = 128, root: str | None = None) -> None:
        self.config = InstanceConfig(seed, queries, easy, hard, junk, distractors, image_size, root)

    def load(self, progress: bool = True) -> RevisitedDataset:
        return load_instances(self.config, progress)

    def settings(self) -> dict[str, Any]:
        return asdict(self.config)

    def cache_key(self) -> dict:
        return {k: v for k, v in asdict(self.config).items() if k != "root"}  # where it is cached is not what it is

    def __repr__(self) -> str:
        return f"SyntheticInstances({self.config})"


class Revisited(InstanceSource):
    """ROxford5k or RParis6k (Radenović et al. 2018) from local files.

    Args:
        name: `roxford5k` or `rparis6k`.
        root: the folder holding `gnd_<name>.pkl` and `jpg/`.
    """

    def __init__(self, root: str, name: str = "roxford5k") -> None:
        if name not in ("roxford5k", "rparis6k"):
            raise ValueError(f"instances.dataset.init_args.name must be roxford5k or rparis6k, got {name!r}")
        self.root, self.name = root, name

    def check(self, key: str = "instances.dataset") -> None:
        root = require_path(self.root, f"{key}.init_args.root", "folder",
                            f"set --{key}.init_args.root to the folder holding gnd_{self.name}.pkl and jpg/")
        require_path(root / f"gnd_{self.name}.pkl", f"{key}.init_args.root", "ground-truth file",
                     f"download gnd_{self.name}.pkl into {root}")

    def settings(self) -> dict[str, Any]:
        return {"root": self.root, "name": self.name}

    def load(self) -> RevisitedDataset:
        return load_revisited(self.root, self.name)

    def __repr__(self) -> str:
        return f"Revisited({self.root!r}, {self.name!r})"
