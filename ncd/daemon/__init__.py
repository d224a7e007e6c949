"""The ncd daemon: backend (dom0 / driver domain) and frontend (guest) roles.

* :mod:`.datapath` - one connected channel: vchan + C frame pump on a TAP fd;
* :mod:`.vif` - one device: a thin asyncio adapter around the xenbus machine, TAP, datapath;
* :mod:`.undo` - the stack of undo actions behind a vif's single teardown;
* :mod:`.deadline` - the loop timer a vif keeps at its machine's next deadline;
* :mod:`.backend` / :mod:`.frontend` - the role-specific halves of a vif and of discovery;
* :mod:`.discovery` - one device-discovery loop for both roles;
* :mod:`.netlink` - link operations on their own thread, awaited;
* :mod:`.service` - what both roles share: the vif table, control socket, status;
* :mod:`.main` - ``ncd backend|frontend``: config, the event loop, logging;
* :mod:`.process` - one daemon process: its roles, control socket, metrics, signals, sd_notify.
"""
