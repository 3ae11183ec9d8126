"""Hello, world: two CPU-bound calls run at once, each in a subinterpreter with its own GIL."""

import trio

import interpool


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


async def main():
    results = {}

    async def run(n):
        results[n] = await interpool.run_sync(fib, n)

    async with trio.open_nursery() as nursery:
        for n in (30, 31):
            nursery.start_soon(run, n)
    for n, value in sorted(results.items()):
        print(f"fib({n}) = {value}")


if __name__ == "__main__":
    trio.run(main)
