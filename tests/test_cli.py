"""The `phalanx` command itself: help, keygen, and the deterministic simulator."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

PHALANX = [sys.executable, "-m", "phalanx.cli"]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PHALANX, *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_subcommand():
    out = run("--help").stdout
    for command in ("keygen", "node", "up", "client", "bench", "sim", "demo"):
        assert command in out


def test_keygen_writes_config_and_private_keys_only_the_owner_can_read(tmp_path):
    result = run("keygen", "--n", "4", "--out", str(tmp_path / "c"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "c" / "cluster.toml").exists()
    for i in range(4):
        mode = stat.S_IMODE(os.stat(tmp_path / "c" / f"replica-{i}.key").st_mode)
        assert mode == 0o600


def test_sim_same_seed_gives_byte_identical_output_across_processes():
    args = ("sim", "--protocol", "pbft", "--n", "4", "--seed", "7", "--crash", "0:0.05:1.0",
            "--drop", "0.01", "--jitter-ms", "2")
    first, second = run(*args), run(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    hashes = [line.split()[3] for line in first.stdout.splitlines() if line.startswith("replica")]
    assert len(hashes) == 4 and len(set(hashes)) == 1
    assert run("sim", "--seed", "8").stdout != first.stdout


@pytest.mark.parametrize("bad", [["sim", "--n", "3", "--regions", "x", "--wan", "/nope.csv"]])
def test_errors_are_reported_clearly_not_as_tracebacks(bad):
    result = run(*bad)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "error" in result.stderr


# -- usage errors are messages, not tracebacks (issue 13, item 8) ----------------------------


@pytest.fixture
def ledger_config(tmp_path):
    from phalanx.client.wallet import Wallet
    from phalanx.config import generate_cluster

    wallet = Wallet.new()
    wallet.save(tmp_path / "w.key")
    generate_cluster(tmp_path / "ledger", 4, app="ledger", genesis={wallet.address: 100})
    generate_cluster(tmp_path / "kv", 4, app="kv")
    return tmp_path


@pytest.mark.parametrize("amount", ["-1", "0", str(2**64), str(-(2**70)), "ten"])
def test_transfer_amount_outside_1_to_2_pow_64_is_a_usage_error(ledger_config, amount):
    result = run("client", "--config", str(ledger_config / "ledger" / "cluster.toml"),
                 "transfer", "--wallet", str(ledger_config / "w.key"), "--to", "00" * 32,
                 amount)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"argument amount: {amount!r} is not an integer" in result.stderr or \
        "is out of range: an amount is 1..2^64-1" in result.stderr


def test_node_with_an_id_the_config_lacks_says_which_ids_exist(ledger_config):
    result = run("node", "--config", str(ledger_config / "kv" / "cluster.toml"), "--id", "9")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "has no replica 9: its 4 replicas have ids 0..3" in result.stderr


@pytest.mark.parametrize("command", [["put", "k", "v"], ["get", "k"], ["delete", "k"]])
def test_key_value_commands_against_a_ledger_cluster_name_the_ledger_commands(
    ledger_config, command
):
    result = run("client", "--config", str(ledger_config / "ledger" / "cluster.toml"),
                 *command)
    assert result.returncode == 2
    assert "runs the ledger app" in result.stderr
    assert "'phalanx client transfer'" in result.stderr
    assert "Traceback" not in result.stderr


def test_ledger_commands_against_a_key_value_cluster_name_the_key_value_commands(
    ledger_config,
):
    result = run("client", "--config", str(ledger_config / "kv" / "cluster.toml"),
                 "balance", "00" * 32)
    assert result.returncode == 2
    assert "runs the key-value store" in result.stderr and "'phalanx client put'" in result.stderr


# -- help, names and warnings (issue 13, item 10) ---------------------------------------------


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def _commands():
    """(name, parser) of every command of up, bench, client, node, keygen, wallet, demo,
    sim and their subcommands."""
    from phalanx.cli import build_parser

    wanted = {"up", "bench", "client", "node", "keygen", "wallet", "demo", "sim"}
    for name, parser in _subparsers(build_parser()):
        if name in wanted:
            yield name, parser
            for sub_name, sub in _subparsers(parser):
                yield f"{name} {sub_name}", sub


def test_every_option_has_help_that_shows_its_default():
    import argparse

    checked = 0
    for name, parser in _commands():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            where = f"phalanx {name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{where} has no help text"
            if action.option_strings and action.nargs != 0 and not action.required:
                text = formatter._expand_help(action)  # what --help prints for it
                assert "default" in text, f"{where} does not show its default: {text!r}"
            checked += 1
    assert checked > 80


def test_bench_batch_size_is_an_alias_of_max_batch_not_a_second_option():
    from phalanx.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["bench", "--batch-size", "64"]).max_batch == 64
    assert parser.parse_args(["bench", "--max-batch", "32"]).max_batch == 32
    bench = dict(_subparsers(parser))["bench"]
    assert [a.option_strings for a in bench._actions if a.dest == "max_batch"] == [
        ["--max-batch", "--batch-size"]
    ]


def test_keygen_warns_that_f_0_tolerates_no_fault(tmp_path):
    small = run("keygen", "--n", "2", "--out", str(tmp_path / "small"))
    assert small.returncode == 0
    assert "f=0: this 2-replica pbft cluster tolerates no faulty replica; 4 replicas " \
           "tolerate one" in small.stderr
    explicit = run("keygen", "--n", "4", "--f", "0", "--out", str(tmp_path / "zero"))
    assert "tolerates no faulty replica" in explicit.stderr
    assert "warning" not in run("keygen", "--n", "4", "--out", str(tmp_path / "ok")).stderr
