"""Protocol-independent building blocks: ids, quorums, messages, effects, crypto interfaces."""
