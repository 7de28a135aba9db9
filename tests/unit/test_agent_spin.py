"""The agent's adaptive poll: its bookkeeping of when polling pays."""

from __future__ import annotations

from shoal.backends import _agent_main


def test_a_poll_that_runs_out_backs_off_exponentially_and_a_hit_resets_it() -> None:
    spin = _agent_main._Spin()
    skips = []
    for _ in range(8):
        spin.paid(False)
        skips.append(spin.skip)
    assert skips == [1, 2, 4, 8, 16, 32, 32, 32]
    spin.skip = 0
    spin.paid(True)
    assert spin.misses == 0
    spin.paid(False)
    assert spin.skip == 1


def test_without_a_load_reading_the_core_counts_as_free() -> None:
    spin = _agent_main._Spin()
    spin.fd = -1
    assert spin.core_to_spare()


def test_a_busy_machine_reads_as_having_no_core_to_spare(tmp_path: object) -> None:
    spin = _agent_main._Spin()
    if spin.fd < 0:
        return  # no /proc here
    spin.cpus = 0  # as if every core were taken
    assert not spin.core_to_spare()
    spin.cpus = 10_000
    assert spin.core_to_spare()
