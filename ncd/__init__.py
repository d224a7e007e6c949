"""ncd: a userspace network channel for Xen (TAP <-> vchan), and xensim."""

__version__ = "0.1.0"
