"""A CPU-bound plugin: counts primes with a pure-Python sieve (parallel only with their own GIL)."""

LIMIT = 2_000_000


def count_primes(limit):
    sieve = bytearray([1]) * limit
    sieve[0:2] = b"\x00\x00"
    for i in range(2, int(limit**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, limit, i)))
    return sum(sieve)


def run():
    return f"{count_primes(LIMIT)} primes below {LIMIT:,}"
