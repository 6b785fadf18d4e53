"""``gateway.tasks.stop``: a background task stops even when something below its code swallows
the first cancellation (redis-py may, while it connects: a gateway whose start failed then hung
in its cleanup instead of exiting 2)."""

from __future__ import annotations

import asyncio

from gateway.tasks import stop


async def test_a_task_that_swallows_a_cancellation_is_stopped_all_the_same() -> None:
    swallowed = 0

    async def loop_that_swallows_one() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # as a library that turned it into its own error, logged

    task = asyncio.ensure_future(loop_that_swallows_one())
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0.01)
    assert swallowed == 1 and not task.done()  # ``await task`` would wait for good now
    await asyncio.wait_for(stop(task), 5)
    assert task.cancelled()


async def test_a_task_that_raises_while_stopping_raises_from_stop() -> None:
    async def failing() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            raise RuntimeError("broken")

    task = asyncio.ensure_future(failing())
    await asyncio.sleep(0)
    try:
        await stop(task)
    except RuntimeError as exc:
        assert str(exc) == "broken"
    else:
        raise AssertionError("stop hid the task's error")


async def test_an_ended_task_is_left_as_it_is() -> None:
    task = asyncio.ensure_future(asyncio.sleep(0, "done"))
    await task
    await stop(task)
    assert task.result() == "done"
