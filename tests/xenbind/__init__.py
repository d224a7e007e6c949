"""cffi bindings to Xen's libxengnttab, libxengntshr and libxenevtchn, for the tests.

The product calls these libraries from C only (cext/vchan maps, shares and notifies; the
forwarding switch will do its grant copies there too), so ncd ships no Python binding
for them; the tests use these to drive grants, mappings and event channels as a domain
(tests/xen, the tracker tests). Import the modules: ``tests.xenbind.gnttab``,
``.gntshr``, ``.evtchn`` (which builds the cffi module on first use, see ``_lib``) and
``.mapping`` (no build needed).
"""
