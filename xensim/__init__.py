"""xensim: a simulated Xen host (hypervisor broker, xenstored, shim libraries)."""
