"""vnode's own MQTT 3.1.1 broker (issue 17), for devices and their mappers on the node.

``codec`` reads and writes packets and refuses anything the specification forbids; ``topics``
checks names and filters and matches them; ``broker`` serves clients and offers an in-process
hook (``Broker.publish``, ``Broker.listen``) for vnode's own modules, so they need no loopback
client. Nothing here is imported unless MQTT is configured.
"""
