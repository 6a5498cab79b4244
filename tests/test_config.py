"""Cluster configuration: TOML round-trips, precise errors, and private-key file modes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from phalanx import config as config_module
from phalanx.config import (
    ClusterConfig,
    ConfigError,
    ReplicaInfo,
    default_options,
    generate_cluster,
    load,
    load_private_key,
    loads,
)

KEYS = [bytes(SigningKey(bytes([i + 1]) * 32).verify_key) for i in range(8)]


def replica(i: int, **changes: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "id": i,
        "host": "127.0.0.1",
        "port": 7000 + i,
        "http_port": 8000 + i,
        "public_key": KEYS[i].hex(),
    }
    table.update(changes)
    return {k: v for k, v in table.items() if v is not None}


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return str(v)


@pytest.fixture
def trusted_protocol() -> Any:
    """A protocol with a trusted component (n >= 2f+1), registered for one test: PBFT's
    spec under another name and fault model (the config only asks for those)."""
    import dataclasses

    from phalanx.core.quorum import TRUSTED
    from phalanx.protocols import registry

    spec = dataclasses.replace(registry.protocol("pbft"), name="trusted-test",
                               resilience=TRUSTED)
    registry.register(spec)
    yield spec.name
    registry.unregister(spec.name)


def cluster_toml(
    replicas: list[dict[str, Any]] | None = None,
    tables: dict[str, dict[str, Any]] | None = None,
    **top: Any,
) -> str:
    """TOML text of a 4-replica PBFT cluster with the given changes (None drops a field)."""
    fields: dict[str, Any] = {"protocol": "pbft", "f": 1}
    fields.update(top)
    lines = [f"{k} = {_value(v)}" for k, v in fields.items() if v is not None]
    for name, table in (tables or {}).items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_value(v)}" for k, v in table.items()]
    for r in replicas if replicas is not None else [replica(i) for i in range(4)]:
        lines.append("[[replicas]]")
        lines += [f"{k} = {_value(v)}" for k, v in r.items()]
    return "\n".join(lines) + "\n"


def expect_error(text: str, *fragments: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads(text, source="cluster.toml")
    message = str(info.value)
    assert message.startswith("cluster.toml: ")
    for fragment in fragments:
        assert fragment in message, message


# -- round trips ---------------------------------------------------------------------------


def test_minimal_file_loads_with_default_options() -> None:
    config = loads(cluster_toml())
    assert (config.protocol, config.n, config.f) == ("pbft", 4, 1)
    assert config.options == default_options("pbft")
    assert config.replica(2) == ReplicaInfo(2, "127.0.0.1", 7002, 8002, KEYS[2])
    assert config.public_keys == KEYS[:4]


def test_options_override_defaults() -> None:
    config = loads(cluster_toml(tables={"pbft": {"max_batch": 64, "batch_delay_ms": 5}}))
    assert config.options["max_batch"] == 64
    assert config.options["batch_delay_ms"] == 5
    assert config.options["window"] == default_options("pbft")["window"]


def test_replicas_listed_out_of_order_are_sorted_by_id() -> None:
    config = loads(cluster_toml(replicas=[replica(i) for i in (2, 0, 3, 1)]))
    assert [r.id for r in config.replicas] == [0, 1, 2, 3]


def test_dump_then_load_is_identity(tmp_path: Path) -> None:
    config = ClusterConfig(
        protocol="pbft",
        f=2,
        replicas=tuple(
            ReplicaInfo(i, f'host "{i}" \\ \t é', 9000 + i, 9100 + i, KEYS[i]) for i in range(7)
        ),
        options={"checkpoint_interval": 64, "window": 128},
    )
    path = tmp_path / "cluster.toml"
    config.dump(path)
    assert load(path) == config


def test_generate_cluster_round_trips_and_keys_match(tmp_path: Path) -> None:
    config = generate_cluster(tmp_path / "c", 4, base_port=7100, base_http_port=8100)
    assert load(tmp_path / "c" / "cluster.toml") == config
    assert (config.n, config.f, config.protocol) == (4, 1, "pbft")
    assert [(r.port, r.http_port) for r in config.replicas] == [
        (7100 + i, 8100 + i) for i in range(4)
    ]
    for r in config.replicas:
        seed = load_private_key(tmp_path / "c" / f"replica-{r.id}.key", r.public_key)
        assert bytes(SigningKey(seed).verify_key) == r.public_key
    assert len(set(config.public_keys)) == 4


@pytest.mark.parametrize(
    ("protocol", "n", "f"),
    [
        ("pbft", 1, 0),
        ("pbft", 3, 0),
        ("pbft", 4, 1),
        ("pbft", 7, 2),
        ("pbft", 9, 2),
        ("trusted-test", 3, 1),
        ("trusted-test", 5, 2),
    ],
)
def test_generate_cluster_default_f(
    tmp_path: Path, protocol: str, n: int, f: int, trusted_protocol: str
) -> None:
    assert generate_cluster(tmp_path, n, protocol=protocol).f == f


def test_a_trusted_component_protocol_needs_only_2f_plus_1_replicas(
    trusted_protocol: str,
) -> None:
    toml = cluster_toml(protocol=trusted_protocol, replicas=[replica(i) for i in range(3)])
    config = loads(toml)
    assert (config.n, config.f) == (3, 1)
    assert config.quorums.strong == 2  # a majority: f+1 of 2f+1


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["protocol", "f", "replicas"])
def test_missing_top_level_field(field: str) -> None:
    changes: dict[str, Any] = {field: None}
    if field == "replicas":
        expect_error(cluster_toml(replicas=[]), "missing field 'replicas'")
    else:
        expect_error(cluster_toml(**changes), f"missing field {field!r}")


@pytest.mark.parametrize("field", ["id", "host", "port", "http_port", "public_key"])
def test_missing_replica_field(field: str) -> None:
    replicas = [replica(i) for i in range(4)]
    replicas[2] = replica(2, **{field: None})
    expect_error(cluster_toml(replicas=replicas), f"replicas[2]: missing field {field!r}")


def test_unknown_fields_are_rejected() -> None:
    expect_error(cluster_toml(protcol="pbft"), "unknown field 'protcol'")
    replicas = [replica(i) for i in range(4)]
    replicas[1]["pubkey"] = "00"
    expect_error(cluster_toml(replicas=replicas), "replicas[1]: unknown field 'pubkey'")


def test_unknown_protocol_and_foreign_options_table() -> None:
    expect_error(cluster_toml(protocol="raft"), "unknown protocol 'raft'", "pbft")
    # A table named after no registered protocol is an unknown field (one named after
    # another registered protocol says the cluster runs this one).
    expect_error(cluster_toml(tables={"dqpbft": {"window": 8}}), "unknown field 'dqpbft'")


def test_unknown_option_is_rejected_with_the_known_ones() -> None:
    expect_error(
        cluster_toml(tables={"pbft": {"checkpoint_intreval": 10}}),
        "unknown option 'checkpoint_intreval' in [pbft]",
        "checkpoint_interval",
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_batch", 0),
        ("window", -1),
        ("batch_delay_ms", -5),
        ("max_batch", "big"),
        ("view_change_timeout_ms", True),
        ("checkpoint_interval", 1.5),
    ],
)
def test_bad_option_values(name: str, value: Any) -> None:
    expect_error(cluster_toml(tables={"pbft": {name: value}}), f"[pbft] {name} must be")


def test_window_smaller_than_two_checkpoint_intervals() -> None:
    expect_error(
        cluster_toml(tables={"pbft": {"checkpoint_interval": 100, "window": 199}}),
        "window (199) must be at least 2 * checkpoint_interval (200)",
    )


@pytest.mark.parametrize(
    ("ids", "fragment"),
    [
        ([1, 2, 3, 4], "got [1, 2, 3, 4]"),
        ([0, 1, 1, 2], "duplicate [1]"),
        ([0, 1, 2, 5], "got [0, 1, 2, 5]"),
    ],
)
def test_ids_must_be_0_to_n_minus_1(ids: list[int], fragment: str) -> None:
    replicas = [replica(i, id=rid) for i, rid in enumerate(ids)]
    expect_error(cluster_toml(replicas=replicas), "ids must be exactly 0..3", fragment)


def test_duplicate_ports_on_one_host() -> None:
    replicas = [replica(i) for i in range(4)]
    replicas[3]["port"] = 7001
    expect_error(cluster_toml(replicas=replicas), "duplicate port 127.0.0.1:7001")
    replicas = [replica(i) for i in range(4)]
    replicas[2]["http_port"] = 7000  # an HTTP port colliding with a protocol port
    expect_error(cluster_toml(replicas=replicas), "duplicate port 127.0.0.1:7000")
    replicas = [replica(i) for i in range(4)]
    replicas[1]["http_port"] = replicas[1]["port"]
    expect_error(cluster_toml(replicas=replicas), "duplicate port 127.0.0.1:7001")


def test_same_port_on_different_hosts_is_fine() -> None:
    replicas = [replica(i, host=f"10.0.0.{i}", port=7000, http_port=8000) for i in range(4)]
    assert loads(cluster_toml(replicas=replicas)).n == 4


def test_port_out_of_range() -> None:
    replicas = [replica(i) for i in range(4)]
    replicas[0]["port"] = 70000
    expect_error(cluster_toml(replicas=replicas), "replica 0: port 70000 is not in 1..65535")


def test_too_few_replicas_for_f(trusted_protocol: str) -> None:
    replicas = [replica(i) for i in range(2)]
    expect_error(cluster_toml(protocol=trusted_protocol, replicas=replicas), "needs at least 3")


def test_too_few_replicas_for_f_byzantine() -> None:
    expect_error(cluster_toml(f=2), "pbft with f=2 needs at least 7 replicas, got n=4")
    replicas = [replica(i) for i in range(2)]
    expect_error(cluster_toml(protocol="raft", replicas=replicas), "unknown protocol")


@pytest.mark.parametrize("f", [-1, "1", 1.0, True])
def test_f_must_be_a_non_negative_integer(f: Any) -> None:
    expect_error(cluster_toml(f=f), "f must be a non-negative integer")


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("zz" * 32, "public_key is not valid hex"),
        ("ab" * 31, "must be 32 bytes"),
        (12, "public_key is not valid hex"),
        ("", "must be 32 bytes"),
    ],
)
def test_bad_public_key(key: Any, fragment: str) -> None:
    replicas = [replica(i) for i in range(4)]
    replicas[3]["public_key"] = key
    expect_error(cluster_toml(replicas=replicas), "replicas[3]:", fragment)


def test_shared_public_key() -> None:
    replicas = [replica(i) for i in range(4)]
    replicas[3]["public_key"] = KEYS[1].hex()
    expect_error(cluster_toml(replicas=replicas), "replicas 1 and 3 share the same public_key")


def test_wrong_types_in_replica() -> None:
    replicas = [replica(i) for i in range(4)]
    replicas[0]["port"] = "7000"
    expect_error(cluster_toml(replicas=replicas), "replicas[0]: port must be an integer")
    replicas = [replica(i) for i in range(4)]
    replicas[0]["host"] = 1
    expect_error(cluster_toml(replicas=replicas), "replicas[0]: host must be a string")
    replicas = [replica(i) for i in range(4)]
    replicas[0]["host"] = ""
    expect_error(cluster_toml(replicas=replicas), "replica 0: host is empty")


def test_invalid_toml_and_unreadable_file(tmp_path: Path) -> None:
    expect_error("protocol = \n", "invalid TOML")
    expect_error('protocol = "pbft"\nf = 1\nreplicas = 3\n', "array of tables")
    with pytest.raises(ConfigError, match="cannot read cluster config"):
        load(tmp_path / "missing.toml")


def test_constructing_an_invalid_config_directly_fails() -> None:
    with pytest.raises(ConfigError, match="needs at least 4"):
        ClusterConfig(
            "pbft", 1, tuple(ReplicaInfo(i, "h", 1 + i, 100 + i, KEYS[i]) for i in range(3))
        )


# -- private keys --------------------------------------------------------------------------


def test_key_files_are_created_0600_even_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        generate_cluster(tmp_path, 4)
    finally:
        os.umask(old)
    for i in range(4):
        assert stat.S_IMODE((tmp_path / f"replica-{i}.key").stat().st_mode) == 0o600


def test_key_files_are_born_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Never world-readable, even briefly: the mode is set by the creating open() itself.
    calls: list[tuple[str, int, int]] = []
    real_open = os.open

    def spy(path: Any, flags: int, mode: int = 0o777, *args: Any, **kwargs: Any) -> int:
        calls.append((str(path), flags, mode))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(config_module.os, "open", spy)
    generate_cluster(tmp_path, 4)
    key_opens = [c for c in calls if c[0].endswith(".key")]
    assert len(key_opens) == 4
    for _, flags, mode in key_opens:
        assert flags & os.O_CREAT and flags & os.O_EXCL
        assert mode == 0o600


def test_generate_refuses_to_overwrite_keys_unless_asked(tmp_path: Path) -> None:
    first = generate_cluster(tmp_path, 4)
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_cluster(tmp_path, 4)
    assert load(tmp_path / "cluster.toml") == first  # untouched by the refusal
    (tmp_path / "replica-0.key").chmod(0o644)
    second = generate_cluster(tmp_path, 4, overwrite=True)
    assert second.public_keys != first.public_keys
    assert stat.S_IMODE((tmp_path / "replica-0.key").stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660])
def test_load_private_key_refuses_group_or_other_access(tmp_path: Path, mode: int) -> None:
    generate_cluster(tmp_path, 1)
    path = tmp_path / "replica-0.key"
    path.chmod(mode)
    with pytest.raises(ConfigError, match=f"mode {mode:04o}.*chmod 600"):
        load_private_key(path)


def test_load_private_key_accepts_owner_only_modes(tmp_path: Path) -> None:
    config = generate_cluster(tmp_path, 1)
    path = tmp_path / "replica-0.key"
    path.chmod(0o400)
    assert len(load_private_key(path, config.replica(0).public_key)) == 32


def _write_key(path: Path, content: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(content)
    return path


def test_load_private_key_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not hex"):
        load_private_key(_write_key(tmp_path / "a.key", b"not hex at all"))
    with pytest.raises(ConfigError, match="must be 32 bytes"):
        load_private_key(_write_key(tmp_path / "b.key", b"abcd\n"))
    with pytest.raises(ConfigError, match="cannot open"):
        load_private_key(tmp_path / "missing.key")
    good = _write_key(tmp_path / "c.key", (b"\x07" * 32).hex().encode())
    with pytest.raises(ConfigError, match="does not match"):
        load_private_key(good, public_key=KEYS[0])
