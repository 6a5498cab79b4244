"""Exit statuses of ``phalanx client`` (README, "Client exit statuses").

0 success and 2 a usage or local error (argparse, ``phalanx.cli.main``) are the usual
ones; 1 is a request that failed in execution, a key not found, or no answer in time.
"""

REFUSED = 3
"""Refused for good: enough replicas agree the request can never be accepted as it is."""
NOT_ACCEPTED = 4
"""Not accepted yet: refused on state or load that may change (and may still execute); retry."""
