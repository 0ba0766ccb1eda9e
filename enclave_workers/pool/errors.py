"""The pool wire's one error type, shared by the framing (``wire``) and the routes in it
(``routes``), so a caller catches one type for any request or response that is not well
formed."""

from __future__ import annotations

__all__ = ["WireError"]


class WireError(Exception):
    """A request or response that is not well formed (cut, spliced, over a bound)."""
