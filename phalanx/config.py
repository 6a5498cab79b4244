"""Cluster configuration: one TOML file for the cluster, one private-key file per replica.

The cluster file names the protocol, f, protocol tunables (a table named after the
protocol) and every replica's addresses and Ed25519 public key::

    protocol = "pbft"
    f = 1
    [pbft]
    checkpoint_interval = 128
    [[replicas]]
    id = 0
    host = "127.0.0.1"
    port = 7000
    http_port = 8000
    public_key = "<64 hex digits>"

A replica's ``host``, ``port`` and ``http_port`` are those of its *front* process (the
one that runs the application and that clients talk to). A protocol whose replicas run
as several processes (:attr:`~phalanx.protocols.spec.ProtocolSpec.other_processes`) lists
each further process, with the same key (every process of a replica speaks for it)::

    [[replicas.processes]]
    role = "preparer"
    partition = 1
    host = "10.0.0.7"
    port = 7104
    http_port = 8104

Private keys live apart from it, as the hex of the 32-byte Ed25519 seed, in files that
only their owner may read (mode 0600): the cluster file can be shared, the keys not.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from phalanx.core.address import Address
from phalanx.core.quorum import Quorums
from phalanx.protocols import registry
from phalanx.protocols.registry import available
from phalanx.protocols.spec import ProtocolSpec

KEY_BYTES = 32
CLUSTER_FILE = "cluster.toml"

_TOP_LEVEL_KEYS = {"protocol", "f", "replicas", "app", "genesis"}
APPS = ("kv", "ledger")
"""The replicated application: the key-value store or the ledger."""
MAX_SUPPLY = (1 << 64) - 1
_REPLICA_KEYS = ("id", "host", "port", "http_port", "public_key")
_PROCESS_KEYS = ("role", "partition", "host", "port", "http_port")


class ConfigError(ValueError):
    """The cluster configuration or a key file is invalid; the message says what and where."""


def no_fault_warning(protocol: str, n: int, f: int) -> str | None:
    """The warning an operator gets for a cluster that tolerates no fault (f=0), else
    None: with f=0 one crashed or lying replica can stop or mislead the whole cluster."""
    if f > 0:
        return None
    return (f"warning: f=0: this {n}-replica {protocol} cluster tolerates no faulty "
            f"replica; {_spec(protocol).resilience.min_replicas(1)} replicas tolerate one "
            f"(f=1)")


def default_options(protocol: str) -> dict[str, Any]:
    """The tunables of ``protocol`` (its cluster-file table) with their default values."""
    return _spec(protocol).options.from_table({}).to_table()


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """Where one process of a replica listens."""

    address: Address
    host: str
    port: int  # replica-to-replica and client protocol traffic
    http_port: int  # HTTP API and /metrics


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """What every node knows about replica ``id``: its key, where its front process
    listens, and its other processes (if its protocol runs a replica as several)."""

    id: int
    host: str
    port: int  # replica-to-replica and client protocol traffic
    http_port: int  # HTTP API and /metrics
    public_key: bytes  # Ed25519 verify key, 32 bytes
    processes: tuple[ProcessInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """A validated cluster: construction raises :class:`ConfigError` on any inconsistency.

    ``replicas`` is sorted by id, and ids are exactly ``0..n-1``. ``options`` holds every
    tunable of the protocol as its cluster-file table (defaults filled in; the protocol's
    options class checks them: :meth:`protocol_options`).
    """

    protocol: str
    f: int
    replicas: tuple[ReplicaInfo, ...]
    options: dict[str, Any] = field(default_factory=dict)
    app: str = "kv"
    genesis: dict[bytes, int] = field(default_factory=dict)
    """The ledger's genesis allocation: address (32-byte public key) -> balance."""

    def __post_init__(self) -> None:
        spec = _spec(self.protocol)
        if not _is_int(self.f) or self.f < 0:
            raise ConfigError(f"f must be a non-negative integer, got {self.f!r}")
        replicas = tuple(sorted(self.replicas, key=lambda r: r.id))
        object.__setattr__(self, "replicas", replicas)
        _check_replicas(replicas, spec.front_role)
        n, need = len(replicas), spec.resilience.min_replicas(self.f)
        if n < need:
            raise ConfigError(
                f"{self.protocol} with f={self.f} needs at least {need} replicas, got n={n}"
            )
        try:
            options = spec.options.from_table(self.options).to_table()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        object.__setattr__(self, "options", options)
        _check_processes(replicas, spec, spec.options.from_table(options))
        _check_app(self.app, self.genesis)

    def protocol_options(self) -> Any:
        """The protocol's typed options (for PBFT a ``PbftConfig``)."""
        return _spec(self.protocol).options.from_table(self.options)

    @property
    def quorums(self) -> Quorums:
        """The cluster's quorum sizes (its protocol's fault model, n and f)."""
        return Quorums(self.n, self.f, _spec(self.protocol).resilience)

    @property
    def n(self) -> int:
        return len(self.replicas)

    def replica(self, replica_id: int) -> ReplicaInfo:
        """The replica with id ``replica_id`` (ids are list positions)."""
        if not 0 <= replica_id < self.n:
            raise KeyError(f"no replica {replica_id} in a cluster of {self.n}")
        return self.replicas[replica_id]

    @property
    def public_keys(self) -> list[bytes]:
        """Verify keys indexed by replica id."""
        return [r.public_key for r in self.replicas]

    @property
    def front_role(self) -> str:
        """The role of every replica's front process (its protocol's)."""
        return _spec(self.protocol).front_role

    @property
    def processes(self) -> list[ProcessInfo]:
        """Every process of every replica: the front processes (by replica id), then the
        others."""
        role = self.front_role
        fronts = [ProcessInfo(Address(r.id, role), r.host, r.port, r.http_port)
                  for r in self.replicas]
        return fronts + [p for r in self.replicas for p in r.processes]

    def process(self, address: Address) -> ProcessInfo:
        """The process at ``address``; KeyError if the cluster has none."""
        for info in self.processes:
            if info.address == address:
                return info
        raise KeyError(f"no process {address} in this cluster")

    def to_toml(self) -> str:
        """The configuration as TOML text that :func:`loads` reads back to an equal value."""
        lines = [f"protocol = {_toml_string(self.protocol)}", f"f = {self.f}",
                 f"app = {_toml_string(self.app)}", ""]
        lines.append(f"[{_toml_key(self.protocol)}]")
        lines += [f"{name} = {value}" for name, value in self.options.items()]
        if self.genesis:
            lines += ["", "[genesis]  # address (public key) = balance"]
            lines += [f'"{a.hex()}" = {b}' for a, b in sorted(self.genesis.items())]
        for r in self.replicas:
            lines += [
                "",
                "[[replicas]]",
                f"id = {r.id}",
                f"host = {_toml_string(r.host)}",
                f"port = {r.port}",
                f"http_port = {r.http_port}",
                f'public_key = "{r.public_key.hex()}"',
            ]
            for p in r.processes:
                lines += [
                    "[[replicas.processes]]",
                    f"role = {_toml_string(p.address.role)}",
                    f"partition = {p.address.partition}",
                    f"host = {_toml_string(p.host)}",
                    f"port = {p.port}",
                    f"http_port = {p.http_port}",
                ]
        return "\n".join(lines) + "\n"

    def dump(self, path: str | os.PathLike[str]) -> None:
        """Write the configuration to ``path`` (atomically: readers see old or new file)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_toml(), encoding="utf-8")
        os.replace(tmp, path)


def load(path: str | os.PathLike[str]) -> ClusterConfig:
    """Read and validate a cluster file; every problem raises :class:`ConfigError`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read cluster config: {e}") from None
    return loads(text, source=str(path))


def loads(text: str, source: str = "<config>") -> ClusterConfig:
    """Parse and validate cluster TOML ``text``; ``source`` prefixes error messages."""
    try:
        return _parse(tomllib.loads(text))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def generate_cluster(
    out_dir: str | os.PathLike[str],
    n: int,
    f: int | None = None,
    protocol: str = "pbft",
    host: str = "127.0.0.1",
    base_port: int = 7000,
    base_http_port: int = 8000,
    overwrite: bool = False,
    app: str = "kv",
    genesis: dict[bytes, int] | None = None,
    options: dict[str, Any] | None = None,
) -> ClusterConfig:
    """Create keys and a cluster file for ``n`` replicas on one host.

    Writes ``out_dir/cluster.toml`` and ``out_dir/replica-<id>.key`` (mode 0600). ``f``
    defaults to the most faults ``n`` replicas of ``protocol`` tolerate. Front processes
    listen on ``base_port + id`` (HTTP: ``base_http_port + id``); a protocol's other
    processes (:func:`process_count`) on the ports after those. Existing key files are an
    error unless ``overwrite``: silently replacing a replica's identity is rarely what
    anyone wants.
    """
    if n < 1:
        raise ConfigError(f"a cluster needs at least one replica, got n={n}")
    spec = _spec(protocol)
    if f is None:
        f = spec.resilience.max_faults(n)
    try:
        others = spec.other_processes(spec.options.from_table(options or {}))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    keys = [SigningKey.generate() for _ in range(n)]
    replicas = []
    for i, key in enumerate(keys):
        first = n + i * len(others)  # the port offset of this replica's other processes
        processes = tuple(
            ProcessInfo(Address(i, role, partition), host, base_port + first + j,
                        base_http_port + first + j)
            for j, (role, partition) in enumerate(others)
        )
        replicas.append(ReplicaInfo(i, host, base_port + i, base_http_port + i,
                                    bytes(key.verify_key), processes))
    config = ClusterConfig(
        protocol=protocol,
        f=f,
        replicas=tuple(replicas),
        options=dict(options or {}),
        app=app,
        genesis=dict(genesis or {}),
    )
    out = Path(out_dir)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_paths = [out / f"replica-{i}.key" for i in range(n)]
    existing = [str(p) for p in key_paths if p.exists()]
    if existing and not overwrite:
        # Checked up front so that a refusal leaves no half-generated cluster behind.
        raise ConfigError(
            f"key files already exist ({', '.join(existing)}); refusing to overwrite "
            "replica keys (pass overwrite=True to replace them)"
        )
    for key_path, key in zip(key_paths, keys, strict=True):
        _write_private_key(key_path, bytes(key), overwrite)
    config.dump(out / CLUSTER_FILE)
    return config


def process_name(address: Address, front_role: str) -> str:
    """``replica-2`` for replica 2's front process, ``replica-2-preparer-1`` for its
    process (preparer, 1): the name of a process's data directory and log file."""
    if address.role == front_role and address.partition == 0:
        return f"replica-{address.replica}"
    return f"replica-{address.replica}-{address.role}-{address.partition}"


def process_count(protocol: str, n: int, options: dict[str, Any] | None = None) -> int:
    """How many processes ``n`` replicas of ``protocol`` run with ``options`` (``n`` for
    a protocol whose replica is one process): the ports :func:`generate_cluster` uses
    from each base port."""
    spec = _spec(protocol)
    try:
        return n * (1 + len(spec.other_processes(spec.options.from_table(options or {}))))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def load_private_key(path: str | os.PathLike[str], public_key: bytes | None = None) -> bytes:
    """Read a replica's 32-byte Ed25519 seed from ``path``.

    Refuses a file that group or others may access. If ``public_key`` is given, also
    checks that the seed belongs to it (catches a node started with another's key).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise ConfigError(f"{path}: cannot open private key: {e}") from None
    with os.fdopen(fd, "rb") as file:
        # fstat the open file, not the path, so the checked file is the one we read.
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{path}: private key file has mode {mode:04o} and is accessible by group "
                f"or others; restrict it with 'chmod 600 {path}'"
            )
        raw = file.read()
    try:
        seed = bytes.fromhex(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise ConfigError(f"{path}: private key is not hex") from None
    if len(seed) != KEY_BYTES:
        raise ConfigError(
            f"{path}: private key must be {KEY_BYTES} bytes ({2 * KEY_BYTES} hex digits), "
            f"got {len(seed)} bytes"
        )
    if public_key is not None and bytes(SigningKey(seed).verify_key) != public_key:
        raise ConfigError(f"{path}: private key does not match the configured public key")
    return seed


# -- parsing -------------------------------------------------------------------------------


def _parse(doc: dict[str, Any]) -> ClusterConfig:
    for name in ("protocol", "f", "replicas"):
        if name not in doc:
            raise ConfigError(f"missing field {name!r}")
    protocol = doc["protocol"]
    if not isinstance(protocol, str):
        raise ConfigError(f"protocol must be a string, got {protocol!r}")
    _spec(protocol)  # unknown protocol: fail before the confusing errors below
    for name in doc:
        if name in _TOP_LEVEL_KEYS or name == protocol:
            continue
        if name in available():
            raise ConfigError(f"options table [{name}] given but protocol is {protocol!r}")
        raise ConfigError(f"unknown field {name!r}")
    options = doc.get(protocol, {})
    if not isinstance(options, dict):
        raise ConfigError(f"{protocol} must be a table of options, got {options!r}")
    replicas = doc["replicas"]
    if not isinstance(replicas, list) or not all(isinstance(r, dict) for r in replicas):
        raise ConfigError("replicas must be an array of tables ([[replicas]])")
    if not replicas:
        raise ConfigError("replicas is empty")
    return ClusterConfig(
        protocol=protocol,
        f=doc["f"],
        replicas=tuple(_parse_replica(i, r) for i, r in enumerate(replicas)),
        options=dict(options),
        app=doc.get("app", "kv"),
        genesis=_parse_genesis(doc.get("genesis", {})),
    )


def _parse_genesis(table: Any) -> dict[bytes, int]:
    if not isinstance(table, dict):
        raise ConfigError("genesis must be a table of address = balance")
    genesis: dict[bytes, int] = {}
    for address, balance in table.items():
        try:
            key = bytes.fromhex(address)
        except ValueError:
            raise ConfigError(f"genesis: address is not hex: {address!r}") from None
        genesis[key] = balance
    return genesis


def _check_app(app: object, genesis: dict[bytes, int]) -> None:
    if app not in APPS:
        raise ConfigError(f"app must be one of {', '.join(APPS)}, got {app!r}")
    for address, balance in genesis.items():
        if len(address) != KEY_BYTES:
            raise ConfigError(
                f"genesis: address {address.hex()!r} must be {KEY_BYTES} bytes "
                f"(an Ed25519 public key, {2 * KEY_BYTES} hex digits)"
            )
        if not _is_int(balance) or not 0 <= balance <= MAX_SUPPLY:
            raise ConfigError(f"genesis: balance of {address.hex()} must be an integer in "
                              f"0..2**64-1, got {balance!r}")
    if sum(genesis.values()) > MAX_SUPPLY:
        raise ConfigError("genesis: total supply exceeds 2**64-1")
    if genesis and app != "ledger":
        raise ConfigError("a genesis allocation needs app = \"ledger\"")


def _parse_replica(index: int, table: dict[str, Any]) -> ReplicaInfo:
    where = f"replicas[{index}]"
    for name in _REPLICA_KEYS:
        if name not in table:
            raise ConfigError(f"{where}: missing field {name!r}")
    unknown = sorted(set(table) - set(_REPLICA_KEYS) - {"processes"})
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}")
    for name in ("id", "port", "http_port"):
        if not _is_int(table[name]):
            raise ConfigError(f"{where}: {name} must be an integer, got {table[name]!r}")
    if not isinstance(table["host"], str):
        raise ConfigError(f"{where}: host must be a string, got {table['host']!r}")
    key_hex = table["public_key"]
    try:
        if not isinstance(key_hex, str):
            raise ValueError
        public_key = bytes.fromhex(key_hex)
    except ValueError:
        raise ConfigError(f"{where}: public_key is not valid hex: {key_hex!r}") from None
    if len(public_key) != KEY_BYTES:
        raise ConfigError(
            f"{where}: public_key must be {KEY_BYTES} bytes ({2 * KEY_BYTES} hex digits), "
            f"got {len(public_key)} bytes"
        )
    processes = table.get("processes", [])
    if not isinstance(processes, list) or not all(isinstance(p, dict) for p in processes):
        raise ConfigError(f"{where}: processes must be an array of tables "
                          "([[replicas.processes]])")
    return ReplicaInfo(table["id"], table["host"], table["port"], table["http_port"], public_key,
                       tuple(_parse_process(f"{where}.processes[{j}]", table["id"], p)
                             for j, p in enumerate(processes)))


def _parse_process(where: str, replica: int, table: dict[str, Any]) -> ProcessInfo:
    for name in _PROCESS_KEYS:
        if name not in table:
            raise ConfigError(f"{where}: missing field {name!r}")
    unknown = sorted(set(table) - set(_PROCESS_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}")
    for name in ("partition", "port", "http_port"):
        if not _is_int(table[name]):
            raise ConfigError(f"{where}: {name} must be an integer, got {table[name]!r}")
    for name in ("role", "host"):
        if not isinstance(table[name], str):
            raise ConfigError(f"{where}: {name} must be a string, got {table[name]!r}")
    try:
        address = Address(replica, table["role"], table["partition"]).check()
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    return ProcessInfo(address, table["host"], table["port"], table["http_port"])


def _check_replicas(replicas: tuple[ReplicaInfo, ...], front_role: str) -> None:
    ids = [r.id for r in replicas]
    if ids != list(range(len(replicas))):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        detail = f"duplicate {duplicates}" if duplicates else f"got {ids}"
        raise ConfigError(f"replica ids must be exactly 0..{len(replicas) - 1}: {detail}")
    endpoints: dict[tuple[str, int], str] = {}
    keys: dict[bytes, int] = {}
    for r in replicas:
        if len(r.public_key) != KEY_BYTES:
            raise ConfigError(f"replica {r.id}: public_key must be {KEY_BYTES} bytes")
        front = ProcessInfo(Address(r.id, front_role), r.host, r.port, r.http_port)
        for p in (front, *r.processes):
            what = f"replica {r.id}" if p is front else f"process {p.address}"
            if p.address.replica != r.id:
                raise ConfigError(f"{what} is listed under replica {r.id}")
            if not p.host:
                raise ConfigError(f"{what}: host is empty")
            for name, port in (("port", p.port), ("http_port", p.http_port)):
                if not 1 <= port <= 65535:
                    raise ConfigError(f"{what}: {name} {port} is not in 1..65535")
                owner = endpoints.setdefault((p.host, port), f"{what} {name}")
                if owner != f"{what} {name}":
                    raise ConfigError(f"duplicate port {p.host}:{port}: {what} {name} and {owner}")
        # Quorums count distinct signers; two replicas with one key would count twice.
        if r.public_key in keys:
            raise ConfigError(f"replicas {keys[r.public_key]} and {r.id} share the same public_key")
        keys[r.public_key] = r.id


def _check_processes(replicas: tuple[ReplicaInfo, ...], spec: ProtocolSpec, options: Any) -> None:
    """Each replica lists exactly the processes its protocol runs."""
    wanted = sorted(spec.other_processes(options))
    for r in replicas:
        listed = sorted((p.address.role, p.address.partition) for p in r.processes)
        if listed != wanted:
            def names(ps: list[tuple[str, int]]) -> str:
                return ", ".join(f"{role}/{part}" for role, part in ps) or "none"
            raise ConfigError(
                f"replica {r.id}: {spec.name} runs the processes [{names(wanted)}] besides "
                f"the front one; the cluster file lists [{names(listed)}]"
            )


def _spec(protocol: str) -> ProtocolSpec:
    try:
        return registry.protocol(protocol)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- writing -------------------------------------------------------------------------------


def _toml_string(text: str) -> str:
    """A TOML basic string: escape what TOML forbids raw, keep the rest."""
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_key(name: str) -> str:
    bare = name and all(ch.isascii() and (ch.isalnum() or ch in "-_") for ch in name)
    return name if bare else _toml_string(name)


def _write_private_key(path: Path, seed: bytes, overwrite: bool) -> None:
    if overwrite:
        path.unlink(missing_ok=True)
    # Mode 0600 is given at creation (a umask can only narrow it), so the key is never
    # readable by others, not even between creating the file and a later chmod. O_EXCL
    # refuses to write into a pre-existing file that might carry looser permissions.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(
            f"{path}: key file already exists; refusing to overwrite a replica's key"
        ) from None
    with os.fdopen(fd, "w", encoding="ascii") as file:
        os.fchmod(fd, 0o600)  # exactly 0600, even under an odd umask
        file.write(seed.hex() + "\n")
        file.flush()
        os.fsync(fd)
