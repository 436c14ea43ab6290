"""Config loading: defaults, file and flags, and refusals that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from vnode import errors
from vnode.cli import main
from vnode.config.loader import FIELDS, load_settings
from vnode.config.settings import Settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vnode.yaml"
    path.write_text(text)
    return path


def test_defaults_are_kubelets() -> None:
    s = load_settings(None, {"--hostname-override": "edge1"})
    assert s.node.name == "edge1"
    assert s.server.port == 10250 and s.server.address == "0.0.0.0"
    assert s.runtime.endpoint == "unix:///run/containerd/containerd.sock"
    assert s.root_dir == Path("/var/lib/vnode") and s.store_path == Path("/var/lib/vnode/store")
    assert s.pods.max_pods == 110 and s.pods.manifest_path is None


def test_file_values_with_relative_paths_and_flag_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
node: {name: Edge-1, labels: {site: lab, example.com/tier: edge}}
server: {port: 10251}
runtime: {containerRuntimeEndpoint: /run/c.sock, runtimeRequestTimeout: 1m30s}
pods: {staticPodPath: manifests, fileCheckFrequency: 500ms, clusterDNS: [10.96.0.10]}
store: {mapSize: 512Mi}
rootDir: /srv/vnode
""",
    )
    s = load_settings(path, {"--port": "10252", "--node-ip": "192.0.2.7"})
    assert s.node.name == "edge-1" and s.node.labels == {"site": "lab", "example.com/tier": "edge"}
    assert s.server.port == 10252 and s.node.node_ip == "192.0.2.7"
    assert s.runtime.endpoint == "unix:///run/c.sock" and s.runtime.request_timeout == 90
    assert s.pods.manifest_path == tmp_path.resolve() / "manifests"
    assert s.pods.file_check_frequency == 0.5 and s.pods.cluster_dns == ("10.96.0.10",)
    assert s.store.map_size == 512 << 20 and s.root_dir == Path("/srv/vnode")


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, ""), {"--hostname-override": "a"}).server.port == 10250


@pytest.mark.parametrize(
    ("text", "flags", "message"),
    [
        ("pods: {staticPodPth: /x}", {}, "pods.staticPodPth: unknown field (did you mean staticPodPath?)"),
        ("sever: {port: 1}", {}, "sever: unknown field (did you mean server?)"),
        ("server: {port: abc}", {}, "server.port: expected an integer, got 'abc'"),
        ("server: {port: true}", {}, "server.port: expected an integer"),
        ("server: {port: 70000}", {}, "server.port: must be between 0 and 65535"),
        ("server: {address: localhost}", {}, "server.address: expected an IP address"),
        ("pods: {fileCheckFrequency: soon}", {}, "pods.fileCheckFrequency: expected a duration"),
        ("pods: {fileCheckFrequency: 0s}", {}, "pods.fileCheckFrequency: must be a positive duration"),
        ("store: {mapSize: 12MB}", {}, "store.mapSize: expected a size"),
        ("store: {mapSize: 1Ki}", {}, "store.mapSize: must be at least 1Mi"),
        (
            "runtime: {containerRuntimeEndpoint: tcp://x:1}",
            {},
            "runtime.containerRuntimeEndpoint: expected unix://",
        ),
        ("node: {labels: {'bad key!': x}}", {}, "node.labels: invalid label key"),
        ("", {"--hostname-override": "under_score"}, "--hostname-override: 'under_score' is not a valid"),
        ("logging: {level: loud}", {}, "logging.level: must be one of"),
        ("server: [1, 2]", {}, "server: expected a mapping"),
        ("", {"--port": "-1"}, "--port: must be between 0 and 65535"),
        ("", {"--node-labels": "a"}, "--node-labels: expected key=value pairs"),
        ("node: {nodeIP: 300.1.1.1}", {}, "node.nodeIP: expected an IP address"),
        ("pods: {clusterDNS: [10.0.0.10, dns]}", {}, "pods.clusterDNS: expected an IP address, got 'dns'"),
        ("pods: {maxPods: 0}", {}, "pods.maxPods: must be between 1 and"),
        ("pods: {crashLoopBackOffMax: .inf}", {}, "pods.crashLoopBackOffMax: expected a finite duration"),
        ("runtime: {relistPeriod: -1s}", {}, "runtime.relistPeriod: expected a duration"),
        ("node: {labels: {a: " + "x" * 64 + "}}", {}, "node.labels: invalid value"),
        ("bogus: 1", {}, "bogus: unknown field"),
        ("", {"server.port": 99999}, "server.port: must be between 0 and 65535"),
        ("", {"--prot": "1"}, "--prot: unknown setting (did you mean --port?)"),
    ],
)
def test_refusals_name_the_field(tmp_path: Path, text: str, flags: dict[str, str], message: str) -> None:
    with pytest.raises(errors.ConfigError) as info:
        load_settings(write(tmp_path, text), {"--hostname-override": "a", **flags})
    assert message in str(info.value)


def test_overrides_by_dotted_path_and_go_durations(tmp_path: Path) -> None:
    path = write(tmp_path, "pods: {staticPodPath: /etc/a, fileCheckFrequency: 2h}\nlogging: {verbosity: 4}")
    s = load_settings(path, {"pods.staticPodPath": "/etc/b", "node.name": "x", "runtime.relistPeriod": 3})
    assert s.pods.manifest_path == Path("/etc/b") and s.node.name == "x"
    assert s.pods.file_check_frequency == 7200 and s.runtime.relist_period == 3.0
    assert s.logging.verbosity == 4 and s.pki_dir == Path("/var/lib/vnode/pki")


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: [1\n")
    with pytest.raises(errors.ConfigError, match=r"vnode.yaml line 3"):
        load_settings(path, {})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="no such file"):
        load_settings(tmp_path / "absent.yaml", {})


def test_cli_exits_2_on_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "server: {port: abc}")
    assert main(["run", "--config", str(path)]) == 2
    assert "vnode: config error: server.port: expected an integer" in capsys.readouterr().err
    assert main(["run", "--port", "99999"]) == 2
    assert "--port: must be between" in capsys.readouterr().err


def test_cli_bad_flag_value_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--hostname-override", "n", "--cluster-dns", "10.0.0.1,nope"]) == 2
    assert "vnode: config error: --cluster-dns: expected an IP address" in capsys.readouterr().err


def test_cli_status_without_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--root-dir", str(tmp_path)]) == 1
    assert f"vnode: no store at {tmp_path / 'store'}" in capsys.readouterr().err


def test_cli_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == "vnode 0.1.0"


def test_shipped_sample_config_loads() -> None:
    sample = Path(__file__).resolve().parents[2] / "conf" / "vnode.yaml"
    s = load_settings(sample, {})
    assert s.pods.manifest_path == sample.parent / "manifests"
    assert (s.pods.manifest_path / "hello.yaml").exists()
    assert s.resources == Settings().resources  # the sample spells out the defaults


def test_run_help_gives_every_flag_its_meaning_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for field in FIELDS:
        assert field.flag in out and f"config: {field.path})" in out, field.path
    assert (
        "--port VALUE port of the kubelet HTTPS API; 0 picks a free one (default: 10250; config: server.port)"
        in out
    )


def test_a_mistyped_flag_gets_a_did_you_mean(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "--prot", "1"])
    assert exited.value.code == 2
    assert "unrecognized argument --prot: did you mean --port?" in capsys.readouterr().err


def test_event_bus_block(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "eventBus: {enable: false, mqttMode: 1, mqttServerInternal: 'tcp://127.0.0.1:2884',"
        " mqttQOS: 1, mqttSessionQueueSize: 500, mqttUsername: u, mqttPassword: p}",
    )
    bus = load_settings(path, {"--hostname-override": "a", "--mqtt-retain": "true"}).event_bus
    assert not bus.enable and not bus.internal and not bus.external and bus.mqtt_mode == 1
    on = load_settings(
        path, {"--hostname-override": "a", "--event-bus": "true", "--mqtt-mode": "0"}
    ).event_bus
    assert on.enable and on.internal and not on.external
    assert (bus.mqtt_server_internal, bus.mqtt_server_external) == (
        "tcp://127.0.0.1:2884",
        "tcp://127.0.0.1:1883",
    )
    assert (bus.mqtt_qos, bus.mqtt_retain, bus.mqtt_session_queue_size) == (1, True, 500)
    off = load_settings(None, {"--hostname-override": "a"}).event_bus
    assert not off.enable and not off.internal and not off.external and off.mqtt_mode == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "eventBus: {mqttMode: 3}",
            "eventBus.mqttMode: must be 0 (internal), 1 (both) or 2 (external), got 3",
        ),
        ("eventBus: {mqttMode: internal}", "eventBus.mqttMode: must be 0 (internal)"),
        (
            "eventBus: {mqttServerInternal: 'mqtt://x:1'}",
            "eventBus.mqttServerInternal: expected tcp://host:port",
        ),
        (
            "eventBus: {mqttServerExternal: 'tcp://x:0'}",
            "eventBus.mqttServerExternal: expected tcp://host:port",
        ),
        ("eventBus: {mqttQOS: 3}", "eventBus.mqttQOS: must be between 0 and 2"),
        ("eventBus: {mqttSessionQueueSize: 0}", "eventBus.mqttSessionQueueSize: must be between 1 and"),
        ("eventBus: {mqttRetain: maybe}", "eventBus.mqttRetain: expected true or false"),
        ("eventBus: {mqttMod: 1}", "eventBus.mqttMod: unknown field (did you mean mqttMode?)"),
        ("eventBus: {mqttUsername: [a]}", "eventBus.mqttUsername: expected a string"),
        ("eventBus: {tlsMqttCertFile: /c}", "eventBus.tlsMqttPrivateKeyFile: the TLS certificate and key"),
        ("eventBus: {mqttPassword: p}", "eventBus.mqttPassword: a password needs eventBus.mqttUsername"),
        (
            "eventBus: {enable: true, mqttMode: 1, mqttServerExternal: 'tcp://127.0.0.1:1884'}",
            "eventBus.mqttServerExternal: mode 1 (both) needs two brokers",
        ),
    ],
)
def test_event_bus_refusals_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(errors.ConfigError) as info:
        load_settings(write(tmp_path, text), {"--hostname-override": "a"})
    assert message in str(info.value)


def test_cli_status_shows_devices_and_mqtt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vnode.store import Put, Store

    store = Store.open_sync(tmp_path / "store")
    twin = {"expected": {"value": "20"}, "actual": {"value": "18"}, "metadata": {"type": "int"}}
    store.write_sync(
        [
            Put(
                "device_twins",
                "default/thermo",
                {"id": "default/thermo", "state": "online", "twin": {"t": twin}},
            ),
            Put("mqtt_sessions", "mapper", {"subscriptions": {"a/#": 1}, "queue": []}),
        ]
    )
    store.close_sync()
    assert main(["status", "--root-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mqtt: 1 persistent session(s), 0 retained message(s), 0 waiting" in out
    assert "device default/thermo\tonline\tt=18/20 (actual/expected)" in out
