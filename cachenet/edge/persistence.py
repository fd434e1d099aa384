"""What an edge node keeps across restarts: its replacement policy's state and its placement plan.

    data_dir/
    ├── policy.json     the policy's recency/frequency state (saved now and then, and at exit)
    └── plan.json       {"plan_id": str, "blocks": [[block_id, blake3, size], ...]} (saved on apply)

Both are written atomically; a missing or unreadable file means "start empty", never an error.
"""

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from cachenet.atomicfile import atomic_write_bytes
from cachenet.errors import BadInput
from cachenet.manifest import BlockRef
from placement.replacement import ReplacementPolicy, make_policy

__all__ = ("PLAN_FILE", "POLICY_FILE", "load_plan", "load_policy", "save_plan", "save_policy")
log = logging.getLogger(__name__)

POLICY_FILE: Final = "policy.json"
PLAN_FILE: Final = "plan.json"


def load_policy(
    data_dir: Path,
    name: str,
    *,
    capacity_bytes: int,
    held: Mapping[str, int],
    clock: Callable[[], float],
) -> ReplacementPolicy:
    """The saved policy (a fresh one when there is none), reconciled with the blocks `held` (id → size)."""
    cls = type(make_policy(name, capacity_bytes=capacity_bytes))
    policy: ReplacementPolicy
    try:
        state = json.loads((data_dir / POLICY_FILE).read_text())
        policy = cls.from_state(state, capacity_bytes=capacity_bytes, clock=clock)
    except (OSError, ValueError, BadInput, KeyError, TypeError):
        policy = make_policy(name, capacity_bytes=capacity_bytes, clock=clock)
    for block_id in [b for b in _policy_ids(policy) if b not in held]:
        policy.remove(block_id)
    for block_id, size in held.items():
        if block_id not in policy:
            policy.insert(block_id, size)
    return policy


def save_policy(data_dir: Path, policy: ReplacementPolicy) -> None:
    """Persist the policy's state for a restart."""
    atomic_write_bytes(data_dir / POLICY_FILE, json.dumps(policy.to_state()).encode())


def load_plan(data_dir: Path) -> tuple[str | None, dict[str, BlockRef]] | None:
    """The saved plan's id and blocks, or None when there is none (or it is unreadable)."""
    try:
        doc = json.loads((data_dir / PLAN_FILE).read_text())
        refs = {b[0]: BlockRef(b[0], b[1], b[2]) for b in doc["blocks"]}
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    plan_id = doc.get("plan_id")
    return (str(plan_id) if plan_id is not None else None), refs


def save_plan(data_dir: Path, plan_id: str | None, blocks: Mapping[str, BlockRef]) -> None:
    """Persist the plan being applied (it is the truth for pins after a crash)."""
    doc = {"plan_id": plan_id, "blocks": [[r.block_id, r.blake3, r.size] for r in blocks.values()]}
    atomic_write_bytes(data_dir / PLAN_FILE, json.dumps(doc).encode())


def _policy_ids(policy: ReplacementPolicy) -> list[str]:
    state = policy.to_state()
    return [str(entry[0]) for entry in state.get("blocks", [])]
