"""ssl_rcc: self-supervised 3D encoders and few-label heads for renal cell carcinoma imaging.

DCE-MRI kinetics live in the sibling package :mod:`kinetics`, which this package uses and which
never imports torch.
"""

__version__ = "0.1.0"

import sys as _sys
import types as _types

# TensorBoard (through Lightning's logger) imports TensorFlow whenever it is installed (the `tf` extra),
# costing seconds and banners on every command; its documented "no_tensorflow" switch is this module.
# TFRecord shards import the real TensorFlow themselves (ssl_rcc.data.shards).
_sys.modules.setdefault("tensorboard.compat.notf", _types.ModuleType("tensorboard.compat.notf"))
