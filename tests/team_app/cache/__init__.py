"""The team's own helpers named `cache` (a common name for an app's own caching code)."""


def label(name: str) -> str:
    return f"team:{name}"
