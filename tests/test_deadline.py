"""connect.deadline.within: a deadline that never eats the caller's cancellation (CPython gh-86296)."""

from __future__ import annotations

import asyncio

import pytest

from connect.deadline import within


async def _cancel_as_the_answer_arrives(wait: object) -> bool:
    """True when the task that was waiting ends cancelled although its answer came in the same loop turn."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[int] = loop.create_future()

    async def watch() -> None:
        await wait(answer, 30)  # type: ignore[operator]
        await asyncio.sleep(30)  # the next blocking query: a lost cancellation waits here

    task = asyncio.create_task(watch())
    await asyncio.sleep(0)  # the watch is waiting on the answer
    answer.set_result(1)
    task.cancel()
    try:
        await asyncio.wait({task}, timeout=1)
        return task.cancelled()
    finally:
        task.cancel()


def test_within_keeps_a_cancellation_that_crosses_the_answer() -> None:
    assert asyncio.run(_cancel_as_the_answer_arrives(within))


def test_asyncio_wait_for_of_this_python_is_the_reason() -> None:
    # Documents why `within` exists; from 3.12 on, wait_for keeps the cancellation too.
    import sys

    if sys.version_info >= (3, 12):
        pytest.skip("wait_for was rewritten on asyncio.timeout in 3.12")
    assert not asyncio.run(_cancel_as_the_answer_arrives(asyncio.wait_for))


def test_within_times_out() -> None:
    async def slow() -> None:
        with pytest.raises(TimeoutError):
            await within(asyncio.sleep(5), 0.01)

    asyncio.run(slow())
