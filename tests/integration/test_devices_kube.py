"""KubeEdge Devices from the real control plane to a paho mapper on vnode's broker and back:
kubectl apply a DeviceModel and a Device for the node -> membership/updated and a delta; kubectl
patch of a desired value -> a delta; the mapper reports -> the Device's status.twins shows it.

The CRDs are written here (group, versions, kinds, names and scope are facts of KubeEdge's API;
their schemas keep unknown fields, so the objects' shapes are the test's own). The RBAC that lets
nodes read Devices and patch them is the operator's to grant, as the README says.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from integration.kube.view import ClusterView
from integration.mqttclients import Paho
from integration.node import VnodeProcess, free_port, running_node, wait_for

CRDS = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: devices.devices.kubeedge.io}
spec:
  group: devices.kubeedge.io
  names: {kind: Device, listKind: DeviceList, plural: devices, singular: device}
  scope: Namespaced
  versions:
    - name: v1beta1
      served: true
      storage: true
      schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: devicemodels.devices.kubeedge.io}
spec:
  group: devices.kubeedge.io
  names: {kind: DeviceModel, listKind: DeviceModelList, plural: devicemodels, singular: devicemodel}
  scope: Namespaced
  versions:
    - name: v1beta1
      served: true
      storage: true
      schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: vnode-devices}
rules:
  - apiGroups: [devices.kubeedge.io]
    resources: [devices, devicemodels]
    verbs: [get, list, watch, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: vnode-devices}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: vnode-devices}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:nodes"}]
"""

MODEL = """
apiVersion: devices.kubeedge.io/v1beta1
kind: DeviceModel
metadata: {name: thermometer}
spec:
  protocol: modbus
  properties:
    - {name: temperature, type: INT, accessMode: ReadWrite}
"""

DEVICE = """
apiVersion: devices.kubeedge.io/v1beta1
kind: Device
metadata: {name: thermo}
spec:
  nodeName: devnode
  deviceModelRef: {name: thermometer}
  protocol: {protocolName: modbus}
  properties:
    - name: temperature
      desired: {value: "20"}
"""


async def established(cluster: ClusterView) -> bool:
    code, _, _ = await cluster.kubectl_status("get", "devices,devicemodels")
    return code == 0


async def next_on(mapper: Paho, topic: str, timeout: float = 20) -> dict[str, Any]:
    for message in await mapper.until(topic, timeout=timeout):
        if message.topic == topic:
            return dict(json.loads(message.payload))
    raise AssertionError("unreachable")


async def test_devices_from_the_cluster_reach_the_mapper_and_back(
    cluster: ClusterView, tmp_path: Path
) -> None:
    await cluster.kube.kubectl("apply", "-f", "-", stdin=CRDS.encode())
    await wait_for(lambda: established(cluster), timeout=30, what="the Device CRDs served")
    port = free_port()
    args = [*cluster.node_args("devnode"), "--event-bus", f"--mqtt-server-internal=tcp://127.0.0.1:{port}"]
    async with running_node(tmp_path, f"unix://{tmp_path}/absent.sock", node_name="devnode", extra_args=args):
        mapper = Paho("127.0.0.1", port, "mapper")
        await mapper.connect()
        try:
            await mapper.subscribe("$hw/events/node/devnode/membership/updated", 1)
            await mapper.subscribe(f"$hw/events/device/{cluster.namespace}/thermo/twin/#", 1)
            await cluster.kubectl("apply", "-f", "-", stdin=(MODEL + "---" + DEVICE).encode())

            added = await next_on(mapper, "$hw/events/node/devnode/membership/updated")
            device_id = f"{cluster.namespace}/thermo"
            assert [d["id"] for d in added["added_devices"]] == [device_id]
            base = f"$hw/events/device/{device_id}/twin"
            delta = await next_on(mapper, f"{base}/update/delta")
            assert delta["delta"] == {"temperature": "20"}
            assert delta["twin"]["temperature"]["metadata"] == {"type": "int"}

            patch = {"spec": {"properties": [{"name": "temperature", "desired": {"value": "25"}}]}}
            await cluster.kubectl("patch", "device", "thermo", "--type=merge", "-p", json.dumps(patch))
            delta = await next_on(mapper, f"{base}/update/delta")
            assert delta["delta"] == {"temperature": "25"}

            report = {"event_id": "r1", "twin": {"temperature": {"actual": {"value": "24"}}}}
            await mapper.publish(f"{base}/update", json.dumps(report).encode(), qos=1)
            result = await next_on(mapper, f"{base}/update/result")
            assert result["event_id"] == "r1" and "code" not in result

            async def reported() -> dict[str, Any] | None:
                device = await cluster.get_json("device", "thermo")
                twins = ((device or {}).get("status") or {}).get("twins") or []
                return twins[0] if twins and twins[0]["reported"]["value"] == "24" else None

            twin = await wait_for(reported, timeout=30, what="the reported value in the Device's status")
            assert twin["propertyName"] == "temperature"
            assert twin["observedDesired"]["value"] == "25"
            assert twin["reported"]["metadata"]["type"] == "int"
        finally:
            await mapper.close()
            await cluster.kubectl("delete", "device", "thermo", "--wait=false", check=False)


async def test_reports_while_offline_survive_a_sigkill(cluster: ClusterView, tmp_path: Path) -> None:
    """The API unreachable: the mapper reports three times, vnode is SIGKILLed and restarted,
    twin/get answers the last value from the store; once the link is back the Device's status
    shows that last value."""
    await cluster.kube.kubectl("apply", "-f", "-", stdin=CRDS.encode())
    await wait_for(lambda: established(cluster), timeout=30, what="the Device CRDs served")
    relay = cluster.relay(0)
    port = free_port()
    args = [
        *cluster.node_args("offnode", servers=[relay.url]),
        "--event-bus",
        f"--mqtt-server-internal=tcp://127.0.0.1:{port}",
    ]
    node = VnodeProcess(tmp_path, f"unix://{tmp_path}/absent.sock", node_name="offnode", extra_args=args)
    await node.start()
    mappers: list[Paho] = []
    try:
        mapper = Paho("127.0.0.1", port, "mapper")
        mappers.append(mapper)
        await mapper.connect()
        await mapper.subscribe("$hw/events/node/offnode/membership/updated", 1)
        device = DEVICE.replace("nodeName: devnode", "nodeName: offnode")
        await cluster.kubectl("apply", "-f", "-", stdin=(MODEL + "---" + device).encode())
        await next_on(mapper, "$hw/events/node/offnode/membership/updated")
        base = f"$hw/events/device/{cluster.namespace}/thermo/twin"
        await mapper.subscribe(f"{base}/update/result", 1)

        relay.cut()
        for value in ("21", "22", "23"):
            report = {"event_id": value, "twin": {"temperature": {"actual": {"value": value}}}}
            await mapper.publish(f"{base}/update", json.dumps(report).encode(), qos=1)
            result = await next_on(mapper, f"{base}/update/result")
            assert result["event_id"] == value and "code" not in result
        await node.kill()
        await node.start()

        again = Paho("127.0.0.1", port, "mapper-2")
        mappers.append(again)
        await again.connect()
        await again.subscribe(f"{base}/get/result", 1)
        await again.publish(f"{base}/get", b'{"event_id":"g"}', qos=1)
        twin = (await next_on(again, f"{base}/get/result"))["twin"]["temperature"]
        assert twin["actual"]["value"] == "23" and twin["expected"]["value"] == "20"

        relay.restore()

        async def reported() -> dict[str, Any] | None:
            obj = await cluster.get_json("device", "thermo")
            twins = ((obj or {}).get("status") or {}).get("twins") or []
            return twins[0] if twins and twins[0]["reported"]["value"] == "23" else None

        await wait_for(reported, timeout=90, what="the last offline report in the Device's status")
    finally:
        for m in mappers:
            await m.close()
        if node.proc is not None and node.proc.returncode is None:
            await node.terminate()
        await cluster.kubectl("delete", "device", "thermo", "--wait=false", check=False)
