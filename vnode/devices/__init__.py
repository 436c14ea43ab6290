"""Devices on the node: KubeEdge-compatible device twins over MQTT (issue 17).

Imported only when the event bus is enabled.
"""
