"""The ncd daemon: backend (dom0 / driver domain) and frontend (guest) roles.

* :mod:`.datapath` - one connected channel: vchan + C frame pump on a TAP fd;
* :mod:`.vif` - one device: xenbus handshake, TAP, datapath, one cleanup path;
* :mod:`.backend` / :mod:`.frontend` - the role-specific halves and device discovery;
* :mod:`.service` - what both roles share: the vif table, control socket, status;
* :mod:`.main` - ``ncd backend|frontend``: config, uvloop, logging, signals, sd_notify.
"""
