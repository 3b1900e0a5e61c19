"""The segmentation model of ``geoseg train``: the architectures it builds and its default encoder.

The model directory contract (save, load, config, checksum, run dir vs model dir) lives in
:mod:`geoseg.modeldir`, shared by every stage; its names are re-exported here for older imports.
"""

from __future__ import annotations

from geoseg.modeldir import (
    ARCHS,
    CONFIG_KEYS,
    build_model,
    file_sha256,
    load_model,
    read_model_config,
    resolve_model_dir,
    save_model,
    validate_model_config,
)

__all__ = [
    "ARCHS",
    "CONFIG_KEYS",
    "DEFAULT_ENCODER",
    "build_model",
    "file_sha256",
    "load_model",
    "read_model_config",
    "resolve_model_dir",
    "save_model",
    "validate_model_config",
]

DEFAULT_ENCODER = "tu-tf_efficientnet_lite0"
