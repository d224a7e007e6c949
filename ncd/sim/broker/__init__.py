"""xensim's hypervisor broker: grant tables, grant mapping/copy, event channels, domains.

Run it with ``python -m ncd.sim.broker --dir WORLD``; drive domains with
:class:`ncd.sim.broker.control.BrokerControl`.
"""
