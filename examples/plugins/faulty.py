"""A plugin that raises: the host gets the exception's type, message and traceback."""


def parse(text):
    return int(text)


def run():
    try:
        return parse("forty-two")
    except ValueError as exc:
        raise RuntimeError("the faulty plugin could not parse its input") from exc
