"""xensim's hypervisor broker: grant tables, grant mapping/copy, event channels, domains.

Run it with ``python -m xensim.broker --dir WORLD``; drive domains with
:class:`xensim.broker.control.BrokerControl`.
"""
