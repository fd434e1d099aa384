"""The holdings log a node reports to the controller: changes since a number, or everything (issue #22)."""

from cachenet.edge.holdings import HoldingsLog


def test_changes_since_a_number_are_the_net_changes_and_an_old_reader_gets_everything() -> None:
    held = {"a"}
    log = HoldingsLog(lambda: held, max_changes=3)
    full, added, removed = log.since(None, None)
    assert (full, added, removed) == (True, ["a"], [])
    epoch, start = log.epoch, log.seq
    held.add("b")
    log.added("b")
    log.removed("a")
    held.discard("a")
    assert log.since(epoch, start) == (False, ["b"], ["a"])
    log.added("a")
    held.add("a")
    assert log.since(epoch, start) == (False, ["a", "b"], [])  # the last change of a block wins
    assert log.since(epoch, log.seq) == (False, [], [])
    log.added("c")
    held.add("c")
    # Four changes since `start`, three kept: the reader fell behind and gets the whole holding.
    assert log.since(epoch, start) == (True, ["a", "b", "c"], [])
    assert log.since("another-process", log.seq)[0] is True
    assert log.since(epoch, log.seq + 5)[0] is True
