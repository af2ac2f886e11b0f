"""Load the medxfer plugin in a source checkout where the package is not installed."""

from importlib.metadata import entry_points

if not any(ep.name == "medxfer" for ep in entry_points(group="pytest11")):
    pytest_plugins = ["harness.plugin"]
