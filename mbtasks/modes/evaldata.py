"""The data a checkpoint is re-evaluated on, and which split the test metrics come from."""

from __future__ import annotations

from collections.abc import Iterable

from omegaconf import DictConfig, OmegaConf


def override_keys(overrides: Iterable[str]) -> list[tuple[str, str]]:
    """``["data.root=/x", "+a=1"]`` -> ``[("data.root", "/x"), ("a", "1")]``."""
    pairs = []
    for item in overrides:
        key, _, value = item.partition("=")
        pairs.append((key.lstrip("+~"), value))
    return pairs


def eval_data_config(cfg: DictConfig, train_cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """Data config for re-evaluating a checkpoint.

    The checkpoint's own data config, with any ``data.*`` keys given on the command
    line applied on top; a ``data=<group>`` choice on the command line takes the
    freshly composed ``cfg.data`` instead.
    """
    pairs = override_keys(overrides)
    if any(key == "data" for key, _ in pairs):
        return cfg.data
    data = OmegaConf.create({"data": OmegaConf.to_container(train_cfg.data, resolve=False)})
    for key, _ in pairs:
        if key.startswith("data."):
            OmegaConf.update(data, key, OmegaConf.select(cfg, key), force_add=True)
    merged = OmegaConf.merge(OmegaConf.create({"data_dir": cfg.get("data_dir")}), data)
    return merged.data


def which_test_split(datamodule, log) -> str:
    """The split the test metrics come from (``metrics.json`` ``test/split``); warns when it is not a test split.

    Without a test split the data modules test on the validation split, the one that also
    picked ``best.ckpt``: those numbers are optimistic and must not be used to choose recipes.
    """
    split = getattr(datamodule, "test_split", "test")
    if split != "test":
        log.warning(
            "NO TEST SPLIT in %s: the test/* metrics are measured on the %s split, which also picked "
            'best.ckpt, so they are optimistic; metrics.json says "test/split": "%s". Give the data a '
            "test split (data.test_ann, data.test_split or a test/ folder) for an unbiased number",
            getattr(datamodule, "root", "the data"),
            split,
            split,
        )
    return split
