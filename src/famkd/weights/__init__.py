"""Weights loading in one home, for every task: famkd checkpoints, community and plain state dicts read with
torch's safe loader and checked against their SHA-256 (`files`), torchvision's weights entries
(`torchvision`), Detectron2 `.pkl` files through an unpickler that never runs code (`safe_pickle`), the
published FAM-KD code's state dicts (`published`), and zoo models built from any of them (`zoo`).
Detection's model conversions (famkd.detection.detectron2_import) read their files through these."""

from famkd.weights.files import file_sha256, load_checkpoint, state_dict_mismatch, verify_sha256
from famkd.weights.torchvision import TORCHVISION_PREFIX, fetch_torchvision_weights, torchvision_weights
from famkd.weights.zoo import load_model_weights, load_teacher, load_teacher_and_name, model_from_checkpoint

__all__ = [
    "TORCHVISION_PREFIX",
    "fetch_torchvision_weights",
    "file_sha256",
    "load_checkpoint",
    "load_model_weights",
    "load_teacher",
    "load_teacher_and_name",
    "model_from_checkpoint",
    "state_dict_mismatch",
    "torchvision_weights",
    "verify_sha256",
]
