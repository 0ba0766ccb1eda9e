"""The feature operations, one module per family; importing this package registers them all.

What it does: exposes ``OPERATIONS`` (op name -> binder) filled by the family modules.

What it does not: no op logic here.
"""

from __future__ import annotations

from . import categorical, generalize, identity, keyed, nulls, numeric, temporal, text
from .base import OPERATIONS, BoundFeature, OpInfo, OpSpecError

__all__ = ["OPERATIONS", "BoundFeature", "OpInfo", "OpSpecError", "categorical", "generalize",
           "identity", "keyed", "nulls", "numeric", "temporal", "text"]
