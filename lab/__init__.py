"""Real-Xen lab: Debian's Xen 4.17 with a PV dom0 and a PV guest inside QEMU (TCG)."""
