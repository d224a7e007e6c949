"""libxenvchan-compatible vchan: Python wrappers around the C hot path (``ncd._hotpath``)."""

from .channel import Vchan, VchanClient, VchanError, VchanServer, local_pair

__all__ = ["Vchan", "VchanClient", "VchanError", "VchanServer", "local_pair"]
